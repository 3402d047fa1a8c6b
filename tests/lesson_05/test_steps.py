"""Lesson 05's steps (code/lesson05/step1_worker.py ... code/lesson05/step5_lifecycle.py) as
docs/05-parallel-variations.md has a learner run them, each compared with the doc.

Each step keeps the names of the one before and mostly adds to it. The tests marked `container`
(`make variations-test`) run them for real: `make lesson-05 STEP=K` (the image already built, as
`make variations-test` builds it first) under a NAME of their own, so that its Redis, network and
labels are theirs. Steps 1 to 3 are scripts, run side by side as from three terminals: what each
prints is compared with the doc. Steps 4 and 5 are servers, their sections run side by side too:
`make lesson-05 STEP=K` runs in a terminal of its own, its banner and log compared with the doc,
and the doc's blocks are typed into one bash, in order (a variable one block sets is there for the
next), against it, each output compared with the doc's; then Ctrl+C, as a learner stops it. So is
the challenge, on a copy of step 5 changed as it says. Stream ids differ on every run: both sides
write them `<id>`. Last, `make lesson-05-down` must remove everything the steps made, the
containers of a run whose server was stopped mid-run included. Side by side, most of the steps'
time, their workers' start-up, is shared.
"""

import os
import re
import signal
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from support.lessons import ROOT, module_name
from support.ports import free_port
from support.server import offline_environment
from support.waiting import answers_200, wait_for
from tests.support.doc_session import Block, Terminal, differences, section_steps
from tests.support.docker_cli import docker
from tests.support.steps import dropped_names, make_dry_run, step_changes

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "05-parallel-variations.md"
STEPS = [
    "code/lesson05/step1_worker.py",
    "code/lesson05/step2_parallel.py",
    "code/lesson05/step3_run_stream.py",
    "code/lesson05/step4_api.py",
    "code/lesson05/step5_lifecycle.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
# What a step runs when it is run, and the next step replaces: its demonstration.
DEMO = {"main", "QUERY", "VARIATIONS"}
# Where step K's section of the doc begins: its heading starts so.
SECTIONS = {1: "1.", 2: "2.", 3: "3.", 4: "4.", 5: "5."}
STREAM_ID = re.compile(r"\b\d{13}-\d+\b")  # a Redis Stream id: milliseconds, a sequence number
IMAGE = os.environ.get("WORKER_IMAGE", "research-agent:lesson-05")


def dry_run(*arguments: str) -> subprocess.CompletedProcess:
    return make_dry_run("-o", "lesson-05-image", "-o", ".venv/.lessons", *arguments)


def test_the_steps_are_the_files_make_runs_and_alone_it_serves_the_production_api():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("code/lesson05/step*.py")) == STEPS
    alone = dry_run("lesson-05")
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.splitlines()[-1].endswith("scripts/lesson-05.sh serve")


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
def test_make_lesson_05_step_k_runs_step_k_beside_redis_with_a_banner(step):
    made = dry_run("lesson-05", f"STEP={step}")
    assert made.returncode == 0, made.stderr
    run = f"scripts/lesson-05.sh run {module_name(STEPS[step - 1])}"
    assert made.stdout.splitlines()[-1].endswith(run)
    assert f"Lesson 05, step {step} of 5" in made.stdout
    assert f"docs/05-parallel-variations.md, section {step}" in made.stdout


def test_a_step_that_does_not_exist_is_refused_by_name():
    made = dry_run("lesson-05", "STEP=9")
    assert made.returncode != 0 and 'there is no step "9"' in made.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = dropped_names(before, after, DEMO)
    assert not missing, f"{after} drops {missing}"


# What each step may take away from the one before: step 2 turns step 1's reading into async and
# its demonstration into three variations; step 3 turns printing into relaying; step 4 replaces
# step 3's demonstration by the API; step 5 stops waiting for each container.
MOST_REMOVED = {PAIRS[0]: 15, PAIRS[1]: 17, PAIRS[2]: 11, PAIRS[3]: 16}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > len(removed)


def test_the_comparison_writes_stream_ids_alike_and_nothing_else():
    assert same("1795757325609-0 run_started\n...", "1800000000000-12 run_started\nmore")
    assert not same("1795757325609-0 run_started", "1800000000000-12 run_done")
    assert not same("exit code 0", "exit code 1")


def same(shown: str, printed: str) -> bool:
    return not differences(STREAM_ID.sub("<id>", shown), STREAM_ID.sub("<id>", printed))


# --- Run for real ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def name():
    """The NAME every step of this module runs under (its Redis, network and labels)."""
    return f"lesson05-steps-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def lesson_env(name):
    """The learner's environment: offline, with this module's NAME and image, and no make of ours
    around (MAKEFLAGS would pass our flags on). Redis and the network are made once, first: the
    steps run side by side below, and two `up`s at once would race to create them."""
    env = {k: v for k, v in offline_environment().items() if not k.startswith("MAKE")}
    env = {**env, "NAME": name, "LESSON05_IMAGE": IMAGE}
    up = subprocess.run(
        ["scripts/lesson-05.sh", "up"], cwd=ROOT, env=env, capture_output=True, timeout=300
    )
    assert up.returncode == 0, up.stderr
    yield env
    down = subprocess.run(
        ["make", "--no-print-directory", "lesson-05-down"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr


def make_command(block: Block, step: int) -> list[str]:
    """The doc's `make lesson-05 STEP=K`, with its image taken as built."""
    assert block.body == f"make lesson-05 STEP={step}", block.body
    return ["make", "--no-print-directory", "-o", "lesson-05-image", "-o", ".venv/.lessons"] + [
        "lesson-05",
        f"STEP={step}",
    ]


@pytest.fixture(scope="module")
def scripts_printed(lesson_env, tmp_path_factory):
    """Steps 1 to 3 run at once, as from three terminals: what each printed, and how it exited.
    Most of their time is the workers' start-up, which side by side they share."""
    folder, started = tmp_path_factory.mktemp("scripts"), {}
    for step in (1, 2, 3):
        [(command, _)] = section_steps(DOC, SECTIONS[step])
        with (folder / f"{step}.out").open("w") as out, (folder / f"{step}.err").open("w") as err:
            started[step] = subprocess.Popen(
                make_command(command, step), cwd=ROOT, env=lesson_env, stdout=out, stderr=err
            )
    for process in started.values():
        process.wait(900)
    return {
        step: (process.returncode, (folder / f"{step}.out").read_text(), (folder / f"{step}.err"))
        for step, process in started.items()
    }


@pytest.mark.parametrize("step", [1, 2, 3])
def test_make_lesson_05_step_k_prints_what_the_doc_shows(step, scripts_printed):
    [(command, shown)] = section_steps(DOC, SECTIONS[step])
    status, printed, errors = scripts_printed[step]
    assert status == 0, printed + errors.read_text()
    assert same(shown.body, printed), (
        f"--- the doc shows\n{shown.body}\n--- `{command.body}` printed\n{printed}"
    )


class Served:
    """A server step as `make lesson-05 STEP=K` runs it in the learner's first terminal (a process
    group of its own), on a free port; `stop()` is Ctrl+C."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path):
        self.port, self.log = free_port(), log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env={**env, "PORT": str(self.port)},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{self.port}/openapi.json"
        ready = lambda: self.process.poll() is not None or answers_200(url)  # noqa: E731
        wait_for(ready, timeout=240, interval=0.25, what="the step's API")
        assert self.process.poll() is None, self.printed()

    def printed(self) -> str:
        """What the terminal shows, as the doc writes it: port 8000, without our probes."""
        text = self.log.read_text(errors="replace").replace(f":{self.port}", ":8000")
        return re.sub(r'(?m)^INFO: .*"GET /openapi\.json HTTP/1\.1" 200 OK\n', "", text)

    def type(self, terminal: Terminal, block: Block) -> str:
        """Type the block (its port mapped) into the second terminal: what it printed."""
        printed, status = terminal.run(block.body.replace(":8000", f":{self.port}"), timeout=600)
        assert status == 0, f"docs/05:{block.line} exited {status}:\n{printed}"
        return printed

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def run_the_section(step: int, env: dict[str, str], folder: Path) -> None:
    """Section K of the doc: `make lesson-05 STEP=K` in one terminal, its blocks in another."""
    (command, shown), *blocks = section_steps(DOC, SECTIONS[step])
    served = Served(make_command(command, step), env, folder / f"step{step}.log")
    terminal = Terminal(ROOT, env)
    try:
        assert same(shown.body, served.printed()), f"docs/05:{command.line}\n{served.printed()}"
        for block, output in blocks:
            printed = served.type(terminal, block)
            assert same(output.body, printed), (
                f"docs/05:{block.line}\n--- the doc shows\n{output.body}\n--- printed\n{printed}"
            )
    finally:
        terminal.close()
        served.stop()


@pytest.fixture(scope="module")
def sections_run(lesson_env, tmp_path_factory):
    """Sections 4 and 5 run at once, each by a learner of its own: what each raised, if anything."""
    folder, failures = tmp_path_factory.mktemp("sections"), {}

    def run(step: int) -> None:
        try:
            run_the_section(step, lesson_env, folder)
        except BaseException as exc:  # reported by the section's own test
            failures[step] = exc

    threads = [threading.Thread(target=run, args=(step,)) for step in (4, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(1200)
    return failures


def test_step_4_streams_a_run_and_resumes_after_an_id_as_the_doc_shows(sections_run):
    if 4 in sections_run:
        raise sections_run[4]


def test_step_5_ends_every_variation_and_removes_its_container_as_the_doc_shows(sections_run):
    if 5 in sections_run:
        raise sections_run[5]


def containers_of(name: str, *labels: str) -> list[str]:
    """The containers labelled with this deployment (and the labels given): Redis, the workers."""
    filters = [f"label={label}" for label in (f"ai-course.deployment={name}", *labels)]
    return docker("ps", "-aq", *(f for label in filters for f in ("--filter", label))).split()


def test_the_challenge_then_make_lesson_05_down_removes_what_the_stopped_step_left(
    name, lesson_env, tmp_path
):
    """The doc's challenge done: step 5 with `start` called on the event loop, and the challenge's
    block typed at it (it prints the second answer's time; how long is not a test's business).
    Stopped with Ctrl+C while its two runs go, it leaves their containers: `make lesson-05-down`
    removes them with Redis, the network and Redis's volume."""
    text = DOC.read_text(encoding="utf-8")
    found = re.search(r"replace `(await asyncio\.to_thread\(start, .*?\))`\s+with `(.*?)`", text)
    old, new = found.groups()
    source = (ROOT / STEPS[4]).read_text(encoding="utf-8")
    assert source.count(old) == 1, "the challenge's line is not in step 5"
    changed = tmp_path / "05_step5_challenge.py"
    changed.write_text(source.replace(old, new), encoding="utf-8")
    [(block, _)] = section_steps(DOC, "Challenge")
    command = ["scripts/lesson-05.sh", "run", str(changed)]  # what make runs, for the copy
    served = Served(command, {**lesson_env, "WORKER_IMAGE": IMAGE}, tmp_path / "challenge.log")
    terminal = Terminal(ROOT, lesson_env)
    try:
        printed = served.type(terminal, block)
        assert re.fullmatch(r"\d+\.\d+ s", printed.strip()), printed
    finally:
        terminal.close()
        served.stop()
    # The second answer came between two starts: containers are there, and Ctrl+C left them.
    assert containers_of(name, "ai-course.run")
    redis = f"{name}-redis"
    volumes = docker("inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", redis).split()
    down = subprocess.run(
        ["make", "--no-print-directory", "lesson-05-down"],
        cwd=ROOT, env=lesson_env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert containers_of(name) == []
    assert docker("network", "ls", "-q", "--filter", f"name=^{name}$") == ""
    assert not set(volumes) & set(docker("volume", "ls", "-q").split())
    assert not list((ROOT / ".build" / "lesson-05").glob(f"{name}.*"))
