"""Lesson 12's steps (code/lesson12/step1_server.py ... code/lesson12/step4_owners.py) as
docs/12-agents-over-a2a.md has a learner run them: each keeps the names of the one before and adds
its idea; `make lesson-12 STEP=K` runs step K.

Each step is a server. Its section's blocks are typed into one bash, in order (variables carry
from block to block), against the step started as `make lesson-12 STEP=K` starts it, on a port of
its own (the doc's client uses A2A_URL, set here to that port; a block's 127.0.0.1:8000 is typed
as that port). `pgrep` in that bash names the step's server; after a block that sends `kill -9`,
the next `make lesson-12 STEP=K` block starts it again. What each block prints is compared with
the doc. Steps 3 and 4 keep their tasks in a real PostgreSQL (make test's); run_python runs in real
sandbox containers, counted by the engine's events. Those runs start a server each, a minute of
CPU together: they are `make a2a-test`'s (marker `container`); the checks of the files are `make
test`'s.
"""

import os
import re
import subprocess
import sys

import pytest

from support.lessons import ROOT, module_name
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from tests.lesson_12.conftest import OWNER, SANDBOX_IMAGE
from tests.support.doc_session import Terminal, differences, section_steps
from tests.support.steps import dropped_names, make_dry_run, step_changes

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "12-agents-over-a2a.md"
STEPS = [
    "code/lesson12/step1_server.py",
    "code/lesson12/step2_input_required.py",
    "code/lesson12/step3_postgres.py",
    "code/lesson12/step4_owners.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
SECTIONS = {1: "1.", 2: "2.", 3: "3.", 4: "### Owners"}  # step 4 is in Going further


def make_dry(*args: str) -> subprocess.CompletedProcess:
    callers = str(ROOT / "code" / "lesson12" / "secrets" / "callers")
    made = ("-o", ".venv/.lessons", "-o", "sandbox-image", "-o", callers)
    return make_dry_run(*made, *args, env={**os.environ, "DATABASE_URL": "set"})


def test_the_steps_are_the_files_make_runs():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("code/lesson12/step*.py")) == STEPS


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_make_lesson_12_step_k_runs_step_k_with_a_banner(step):
    make = make_dry("lesson-12", f"STEP={step}")
    assert make.returncode == 0, make.stderr
    assert make.stdout.splitlines()[-1].endswith(f"python -m {module_name(STEPS[step - 1])}")
    assert f"Lesson 12, step {step}" in make.stdout and "docs/12-agents-over-a2a.md" in make.stdout


def test_a_step_that_does_not_exist_is_refused_by_name():
    make = make_dry("lesson-12", "STEP=9")
    assert make.returncode != 0 and 'there is no step "9"' in make.stderr


def test_steps_3_and_4_say_how_to_get_a_database_first():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        ["make", "--no-print-directory", "lesson-12-step-check", "STEP=3"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert done.returncode == 2 and "DATABASE_URL" in done.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = dropped_names(before, after)
    assert not missing, f"{after} drops {missing}"


# What each step may take away: the lines it changes (step 2: the run, to go on from a decision;
# step 3: the checkpointer and the store; step 4: the routes, given the callers).
MOST_REMOVED = {PAIRS[0]: 8, PAIRS[1]: 10, PAIRS[2]: 6}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > len(removed)


# --- Run for real: the doc's blocks, typed -----------------------------------------------------


class Step:
    """Step K's server as `make lesson-12 STEP=K` runs it, started again after a kill."""

    def __init__(self, step: int, tmp_path, **settings):
        self.step, self.port, self.tmp_path = step, free_port(), tmp_path
        self.env = offline_environment(
            HOST="127.0.0.1", PORT=self.port, SANDBOX_IMAGE=SANDBOX_IMAGE, SANDBOX_OWNER=OWNER,
            A2A_URL=f"http://127.0.0.1:{self.port}", **settings,
        )  # fmt: skip
        self.server: ServerProcess | None = None
        self.pid_file = tmp_path / "server.pid"
        self.starts = 0

    def start(self) -> str:
        self.starts += 1
        self.server = ServerProcess(
            [sys.executable, STEPS[self.step - 1]], cwd=ROOT, env=self.env, port=self.port,
            ready_path="/.well-known/agent-card.json", ready_timeout=90,
            log_path=self.tmp_path / f"server-{self.starts}.log",
        ).start()  # fmt: skip
        self.pid_file.write_text(str(self.server.process.pid))
        log = re.sub(
            r'(?m)^INFO: .* "GET /.well-known/agent-card.json HTTP/1.1" 200 OK\n',
            "",
            self.server.log_text(),
        )  # our probe
        return log.replace(f":{self.port}", ":8000")

    def running(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def stop(self) -> None:
        if self.server:
            self.server.stop()


def type_blocks(step: Step, blocks) -> None:
    terminal = Terminal(ROOT, step.env)
    try:
        terminal.run(f'pgrep() {{ cat "{step.pid_file}"; }}')
        for command, shown in blocks:
            if command.body.startswith("make lesson-12 STEP="):
                printed = step.start()
            else:
                if not step.running():
                    step.start()
                # The doc's port (8000) is this step's own port here.
                typed = command.body.replace("127.0.0.1:8000", f"127.0.0.1:{step.port}")
                printed, status = terminal.run(typed, timeout=180)
                assert status == 0, f"docs/12:{command.line} exited {status}:\n{printed}"
                if "kill -9" in command.body:
                    step.server.process.wait(30)
            if shown is not None:
                problems = differences(shown.body, printed.replace(f":{step.port}", ":8000"))
                assert not problems, f"docs/12:{command.line}\n{problems}"
    finally:
        terminal.close()


@pytest.fixture
def step_factory(tmp_path):
    made = []

    def make(number: int, **settings) -> Step:
        made.append(Step(number, tmp_path, **settings))
        return made[-1]

    yield make
    for step in made:
        step.stop()


def test_step_1_answers_as_the_doc_shows(step_factory):
    type_blocks(step_factory(1), section_steps(DOC, SECTIONS[1]))


def test_step_2_asks_for_input_then_takes_the_decision(engine, step_factory, sandbox_starts):
    starts = sandbox_starts()
    step = step_factory(2)
    step.start()
    type_blocks(step, section_steps(DOC, SECTIONS[2]))
    assert sum(starts.per("agent-sandbox.request-id").values()) == 1


def test_step_3_takes_the_decision_after_a_kill(engine, step_factory, postgres_dsn, sandbox_starts):
    starts = sandbox_starts()
    step = step_factory(3, DATABASE_URL=postgres_dsn)
    step.start()
    ask = [b for b in section_steps(DOC, SECTIONS[2]) if "ask" in b[0].body]  # as the doc says
    blocks = section_steps(DOC, SECTIONS[3])
    assert any(c.body.startswith("kill -9 $(pgrep -f step3_postgres)") for c, _ in blocks)
    type_blocks(step, ask + blocks)
    assert sum(starts.per("agent-sandbox.request-id").values()) == 1


def test_step_4_scopes_each_task_to_its_caller(engine, step_factory, postgres_dsn):
    callers = ROOT / "code" / "lesson12" / "secrets" / "callers"
    subprocess.run(["make", "-s", str(callers)], cwd=ROOT, check=True, timeout=60)
    assert {line.split()[0] for line in callers.read_text().splitlines()} == {"planner", "bob"}
    step = step_factory(4, DATABASE_URL=postgres_dsn)
    step.start()
    type_blocks(step, section_steps(DOC, SECTIONS[4]))
