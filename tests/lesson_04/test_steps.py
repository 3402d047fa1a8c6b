"""Lesson 04's steps (code/lesson04/step1_sandbox.py ... code/lesson04/step4_api.py): each keeps the
names and the shape of the one before and adds its idea; `make lesson-04 STEP=K` runs step K and
prints what docs/04-sandboxed-tools.md shows; step 3 bounds its containers and sweeps only what
expired.

The tests marked `container` run real sandboxes (`make sandbox-test`); step 4's commands are run by
tests/repo/test_docs.py, and tests/lesson_04/test_alike.py compares step 4 with the research agent.
"""

import asyncio
import contextlib
import os
import subprocess
import time
import uuid

import docker
import pytest

from support.lessons import ROOT, import_lesson, module_name
from tests.support.doc_output import printed_as_shown, shown_output
from tests.support.steps import definitions, dropped_names, make_dry_run, step_changes

STEPS = [
    "code/lesson04/step1_sandbox.py",
    "code/lesson04/step2_tool.py",
    "code/lesson04/step3_bounded.py",
    "code/lesson04/step4_api.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
DOC = ROOT / "docs" / "04-sandboxed-tools.md"
# What a step runs when it is run, and the next step replaces: its demonstration.
DEMO = {"PROGRAMS", "QUESTIONS", "main"}
# Unchanged from step 1 to step 4: the restrictions, the result, the kill.
KEPT = ["IMAGE", "COMMAND", "TIMEOUT_SECONDS", "MAX_OUTPUT_BYTES", "RESTRICTIONS", "RunResult"]
KEPT += ["client", "kill"]


# make, without remaking what `make test` built before it runs the tests (the environments, the
# sandbox's image).
MADE = ("-o", ".venv/.lessons", "-o", "sandbox-image")


def test_the_steps_are_the_files_make_runs():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("code/lesson04/step*.py")) == STEPS
    make = make_dry_run(*MADE, "lesson-04")
    assert make.returncode == 0, make.stderr
    assert make.stdout.splitlines()[-1].endswith(
        f"python -m {module_name(STEPS[-1])}"
    )  # alone: the last step


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_make_lesson_04_step_k_runs_step_k_with_a_banner(step):
    make = make_dry_run(*MADE, "lesson-04", f"STEP={step}")
    assert make.returncode == 0, make.stderr
    assert make.stdout.splitlines()[-1].endswith(f"python -m {module_name(STEPS[step - 1])}")
    assert f"Lesson 04, step {step}" in make.stdout and "docs/04-sandboxed-tools.md" in make.stdout


def test_a_step_that_does_not_exist_is_refused_by_name():
    make = make_dry_run("lesson-04", "STEP=9")
    assert make.returncode != 0
    assert 'there is no step "9"' in make.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = dropped_names(before, after, DEMO)
    assert not missing, f"{after} drops {missing}"


@pytest.mark.parametrize("step", STEPS[1:])
def test_the_restrictions_and_the_result_stay_as_step_1_has_them(step):
    first, later = definitions(STEPS[0]), definitions(step)
    changed = [name for name in KEPT if first[name] != later[name]]
    assert not changed, f"{step} changes {changed}"


# What each step may take away from the one before: its demonstration (step 1's programs, step 2's
# questions, step 3's crowd), and the lines it changes (step 3: the container's create, the tool's
# call; step 4: nothing else).
MOST_REMOVED = {PAIRS[0]: 17, PAIRS[1]: 7, PAIRS[2]: 8}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > len(removed)


# --- Run for real ---------------------------------------------------------------------------


@pytest.mark.container
@pytest.mark.parametrize("step", [1, 2, 3])
def test_make_lesson_04_step_k_prints_what_the_doc_shows(step):
    command = f"make lesson-04 STEP={step}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAKE"))}
    result = subprocess.run(
        command.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    shown = shown_output(DOC, command)
    assert printed_as_shown(shown, result.stdout), (
        f"--- the doc shows\n{shown}\n--- `{command}` printed\n{result.stdout}"
    )


@pytest.fixture(scope="module")
def step_3():
    return import_lesson(STEPS[2])


@pytest.mark.container
def test_step_3_runs_at_most_max_concurrent_containers_and_leaves_none(step_3):
    # Each run prints when it started and ended (the host's clock) and its container's id.
    code = "import socket, time\na = time.time()\ntime.sleep(1)\n"
    code += "print(a, time.time(), socket.gethostname())"

    async def crowd():
        return await asyncio.gather(*(step_3.arun(code) for _ in range(10)))

    printed = [result.stdout.split() for result in asyncio.run(crowd())]
    spans = [(float(start), float(end)) for start, end, _ in printed]
    most = max(sum(s <= moment < e for s, e in spans) for moment, _ in spans)
    assert 2 <= most <= step_3.MAX_CONCURRENT, spans
    ids = {container_id for _, _, container_id in printed}
    assert len(ids) == 10  # a container of its own for each run...
    # Sparse: ids from the list alone. Inspecting each container raced the other checks'
    # containers, removed between the list and the inspect.
    left = {c.id[:12] for c in step_3.client.containers.list(all=True, sparse=True)}
    assert not ids & left  # ...removed after it


@pytest.mark.container
def test_step_3_sweeps_expired_sandboxes_and_keeps_live_ones(step_3):
    owner = f"test-{uuid.uuid4().hex[:12]}"
    made = {}
    for name, expires in (("expired", time.time() - 1), ("live", time.time() + 600)):
        labels = {"agent-sandbox.owner": owner, "agent-sandbox.expires": str(int(expires))}
        made[name] = step_3.client.containers.create(step_3.IMAGE, ["python"], labels=labels)
    try:
        assert step_3.sweep() >= 1
        left = step_3.client.containers.list(
            all=True, filters={"label": f"agent-sandbox.owner={owner}"}
        )
        assert [c.id for c in left] == [made["live"].id]
    finally:
        for container in made.values():
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


def test_the_comparison_tells_a_changed_line_and_lets_dots_stand_for_what_varies():
    shown = "banner\n...\ntook ... s: 0 1"
    assert printed_as_shown(shown, "banner\nbuilt\nsmoke\ntook 3.8 s: 0 1")
    assert printed_as_shown(shown, "banner\ntook 2 s: 0 1\n")
    assert not printed_as_shown(shown, "banner\ntook 2 s: 0 2")
    assert not printed_as_shown(shown, "banner\ntook 2 s: 0 1\nmore")
    assert not printed_as_shown("a\nb", "a")
