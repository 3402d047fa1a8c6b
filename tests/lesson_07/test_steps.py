"""Lesson 07's steps (code/lesson07/step1_topics.py ... code/lesson07/step4_deadletters.py), as
docs/07-event-driven-agents.md has a learner run them.

Each step keeps the names of the one before and adds its idea; `make lesson-07 STEP=K` runs step
K after a banner (`make lesson-07-banner`), and `make lesson-07` alone the Compose project. Each
step is run as `make lesson-07 STEP=K` runs it (`python -m lesson07.stepK_name`, REDIS_URL set),
against a real redis-server (Debian's, `fresh_redis`) instead of the steps' container, and what it
prints after the banner is compared with the doc's block. The challenge is done as the doc says, and
its solution's counts checked. Step 5, the Compose project, is typed by
tests/lesson_07/test_containers.py (`make pubsub-test`); tests/lesson_07/test_alike.py compares step
4 with the production agents."""

import re
import subprocess
import sys

import pytest
import redis

from support import zygote
from support.lessons import ROOT, module_name, run_module
from support.server import offline_environment
from tests.support.doc_session import differences, section_steps
from tests.support.steps import definitions, step_changes

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "07-event-driven-agents.md"
STEPS = [
    "code/lesson07/step1_topics.py",
    "code/lesson07/step2_acks.py",
    "code/lesson07/step3_once.py",
    "code/lesson07/step4_deadletters.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
# What a step runs when it is run, and the next step replaces: its demonstration.
DEMO = {"main", "die"}
# Step 3's one idea: the transaction (`apply`) becomes the script that stores an effect once.
REPLACED = {"apply": "apply_once"}


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def test_the_steps_are_the_files_make_runs():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("code/lesson07/step*.py")) == STEPS
    for number, step in enumerate(STEPS, 1):
        dry = make(
            "-n", "-o", ".venv/.lessons", "-o", "lesson-07-redis", "lesson-07", f"STEP={number}"
        )
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[-1].endswith(f"python -m {module_name(step)}"), dry.stdout
        assert f"Lesson 07, step {number} of 5" in dry.stdout
    alone = make("-n", "-o", "lesson-07-image", "lesson-07")  # alone: the Compose project
    assert alone.returncode == 0, alone.stderr
    assert "compose.yaml up -d --wait" in alone.stdout and "lesson07.step" not in alone.stdout


def test_a_step_that_does_not_exist_is_refused_by_name():
    refused = make("lesson-07", "STEP=9")
    assert refused.returncode != 0
    assert 'there is no step "9"' in refused.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    kept = set(definitions(after)) | {REPLACED.get(name) for name in definitions(before)}
    missing = {n for n in set(definitions(before)) - DEMO if n not in kept and n not in REPLACED}
    missing |= {n for n, new in REPLACED.items() if n in definitions(before) and new not in kept}
    assert not missing, f"{after} drops {sorted(missing)}"


def test_the_envelope_stays_as_step_1_has_it():
    first = definitions(STEPS[0])
    for step in STEPS[1:]:
        later = definitions(step)
        changed = [n for n in ("CloudEvent", "xadd", "KINDS", "TYPES") if first[n] != later[n]]
        assert not changed, f"{step} changes {changed}"


# What each step may take away from the one before: its demonstration, and the lines its idea
# changes (step 2: the read with NOACK; step 3: the transaction, and step 2's kill; step 4: the
# plain handler call).
MOST_REMOVED = {PAIRS[0]: 9, PAIRS[1]: 25, PAIRS[2]: 7}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds_its_idea(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) >= 15, "\n".join(added)


def banner(step: int) -> str:
    """What `make lesson-07 STEP=K` prints before the step starts (its Redis' lines aside)."""
    done = make("-s", "lesson-07-banner", f"STEP={step}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_step(path, redis_url: str, log) -> str:
    """`python path` as `make lesson-07 STEP=K` runs it (REDIS_URL given), forked ready-imported;
    what it printed, once it has exited 0."""
    env = offline_environment(REDIS_URL=redis_url)
    process = zygote.start(
        [sys.executable, *run_module(str(path))], cwd=ROOT, env=env, log_path=log
    )
    try:
        code = process.wait(180)
    except subprocess.TimeoutExpired:
        process.kill()
        code = "no end after 180 s"
    printed = log.read_text()
    assert code == 0, f"{path.name}: {code}\n{printed}"
    return printed


def shown(step: int) -> str:
    """The block of output docs/07 shows after `make lesson-07 STEP=K` in section K."""
    (command, output), *_ = section_steps(DOC, f"{step}.")
    assert command.body == f"make lesson-07 STEP={step}" and command.mark.startswith("checked-by")
    return output.body


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_make_lesson_07_step_k_prints_what_the_doc_shows(step, fresh_redis, tmp_path):
    printed = run_step(ROOT / STEPS[step - 1], fresh_redis.url, tmp_path / "step.log")
    problems = differences(shown(step), banner(step) + printed)
    assert not problems, problems
    if step == 2:  # the consumer that died is still in the group; its event was claimed and acked
        r = redis.Redis.from_url(fresh_redis.url, decode_responses=True)
        consumers = r.xinfo_consumers("concept.requests", "concepts")
        assert len(consumers) == 2 and all(c["pending"] == 0 for c in consumers), consumers


def counts(redis_url: str) -> dict:
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    topics = ["learning.requests", "concept.requests", "progress.requests"]
    return {"progress": r.hgetall("progress:ann"), **{t: r.xlen(t) for t in topics}}


def test_the_challenge_without_the_check_counts_the_copy_twice(fresh_redis, tmp_path):
    """docs/07's challenge done: step 3 without the line it names counts the copy again, as the
    solution says; with the line, once."""
    text = DOC.read_text(encoding="utf-8")
    line = re.search(r"delete the line\n`(.*)` and run `make lesson-07 STEP=3`", text)[1]
    source = (ROOT / STEPS[2]).read_text(encoding="utf-8")
    assert source.count(line + "\n") == 1, "the challenge's line is not in step 3"
    changed = tmp_path / "07_step3_challenge.py"
    changed.write_text(source.replace(line + "\n", ""), encoding="utf-8")
    run_step(changed, fresh_redis.url, tmp_path / "challenge.log")
    solution = text[text.index("<summary>Solution</summary>") :]
    assert "`concept.requests` holds two events, `progress.requests` four" in solution
    assert counts(fresh_redis.url) == {
        "progress": {
            "questions": "4",
            "kind:concepts": "2",
            "kind:debug": "1",
            "kind:exercise": "1",
        },
        "learning.requests": 4,
        "concept.requests": 2,
        "progress.requests": 4,
    }
