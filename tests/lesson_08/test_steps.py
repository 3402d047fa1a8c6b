"""Lesson 08's steps (code/lesson08/step1_server.py ... code/lesson08/step5_pins.py): each keeps the
names and the shape of the one before and adds its idea; `make lesson-08 STEP=K` runs step K with
the Python of lesson 08's own environment and prints what docs/08-mcp-tools.md shows. Step 1 serves:
the doc's curl blocks are typed into one bash against it, as a learner's second terminal would.
tests/lesson_08/gateway_env/test_steps_alike.py compares step 5 with the production gateway."""

import os
import subprocess
import time

import httpx
import pytest

from support.lessons import ROOT, module_name
from support.mcp_servers import LESSON08_PYTHON
from support.ports import free_port
from support.server import offline_environment
from tests.support.doc_output import printed_as_shown, shown_output
from tests.support.doc_session import Terminal, differences, section_steps
from tests.support.steps import dropped_names, make_dry_run, step_changes

from .conftest import modern_headers, modern_request

pytestmark = [pytest.mark.container, pytest.mark.xdist_group("lesson08-steps")]

STEPS = [
    "code/lesson08/step1_server.py",
    "code/lesson08/step2_client.py",
    "code/lesson08/step3_gateway.py",
    "code/lesson08/step4_allowlist.py",
    "code/lesson08/step5_pins.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
DOC = ROOT / "docs" / "08-mcp-tools.md"
# What a step may drop of the one before: step 1's port (step 2 serves on a free one).
DEMO = {"PORT", "main"}
# make, without rebuilding what `make test` built (the environments) before it runs the tests.
MADE = ("-o", ".venv/.lessons", "-o", ".venv/lesson08/.installed")
MAKE = ["make", "--no-print-directory", *MADE]


def test_the_steps_are_the_files_make_runs():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("code/lesson08/step*.py")) == STEPS
    for k, step in enumerate(STEPS, 1):
        dry = make_dry_run(*MADE, "lesson-08", f"STEP={k}")
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines()[-1].endswith(
            f".venv/lesson08/bin/python -m {module_name(step)}"
        )
        assert f"Lesson 08, step {k} of 5" in dry.stdout and "docs/08-mcp-tools.md" in dry.stdout


def test_a_step_that_does_not_exist_is_refused_by_name():
    done = subprocess.run(
        [*MAKE, "lesson-08", "STEP=9"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0 and 'there is no step "9"' in done.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = dropped_names(before, after, DEMO)
    assert not missing, f"{after} drops {missing}"


# What each step takes away from the one before: the lines it changes (step 2: step 1's serving;
# step 3: the one call; step 4: the client's opening, the gateway's line; step 5: the gateway's).
MOST_REMOVED = {PAIRS[0]: 7, PAIRS[1]: 6, PAIRS[2]: 7, PAIRS[3]: 2}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > len(removed)


@pytest.mark.parametrize("step", [2, 3, 4, 5])
def test_make_lesson_08_step_k_prints_what_the_doc_shows(step):
    command = f"make lesson-08 STEP={step}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAKE"))}
    done = subprocess.run(
        [*MAKE, "lesson-08", f"STEP={step}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    shown = shown_output(DOC, command)
    assert printed_as_shown(shown, done.stdout), (
        f"--- the doc shows\n{shown}\n--- `{command}` printed\n{done.stdout}"
    )


def wait_until_it_answers(url: str, process: subprocess.Popen) -> None:
    body = modern_request("server/discover")
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, "step 1 exited"
        try:
            if httpx.post(url, json=body, headers=modern_headers(body)).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "step 1 never answered"
        time.sleep(0.2)


def test_step_1_answers_the_docs_curl_as_the_doc_shows(tmp_path):
    (command, _), *blocks = section_steps(DOC, "1.")
    assert command.body == "make lesson-08 STEP=1" and len(blocks) == 2
    port = free_port()
    log = (tmp_path / "step1.log").open("w")
    server = subprocess.Popen(
        [LESSON08_PYTHON, STEPS[0]],
        cwd=ROOT,
        env=offline_environment(NOTES_PORT=port),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    terminal = Terminal(ROOT, dict(os.environ))
    try:
        wait_until_it_answers(f"http://127.0.0.1:{port}/mcp", server)
        for block, shown in blocks:
            printed, status = terminal.run(
                block.body.replace("localhost:8091", f"127.0.0.1:{port}")
            )
            assert status == 0, printed
            assert not (problems := differences(shown.body, printed)), problems
    finally:
        terminal.close()
        server.terminate()
        server.wait(30)
        log.close()
