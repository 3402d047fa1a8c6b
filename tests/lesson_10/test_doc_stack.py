"""docs/10's production app in Compose (Going further) as written, on a fresh `make lesson-10`:
the Compose project `lesson10` on port 8110, the one a learner runs (so this test skips when that
project is up already: it would take it down at the end).

Each shell block of the section is typed into one bash, in order, and what it prints is compared
with the doc; before a block that reads a run's `STATE`, the bash waits until the run is not
`running` any more, as a person reading the doc would. The blocks start a run, send an edit whose
program sleeps, kill both replicas with `kill -s SIGKILL` while it runs, bring them back with `make
lesson-10`, and read the answer: the engine's events must show the run's program started once.
Then the approvals page, in headless Chromium, starts a run and approves it, as the doc says; and
`make lesson-10-down` leaves nothing of the project.
"""

import os
import subprocess

import pytest

from support.lessons import ROOT
from tests.support.browser import headless_chromium
from tests.support.doc_session import Terminal, differences, section_steps
from tests.support.docker_cli import NO_COMPOSE_V2, ContainerStarts, compose_v2, docker

pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "10-durable-runs.md"
STACK = "### The production app in Compose"
URL = "http://127.0.0.1:8110"
PROJECT = "label=com.docker.compose.project=lesson10"
WAIT_WHILE_RUNNING = f"""for _ in $(seq 600); do
  case "$(curl -s {URL}/v1/runs/$RUN -H "Authorization: Bearer $TOKEN")" in
    *'"state":"running"'*) sleep 0.2 ;;
    *) break ;;
  esac
done"""
ANSWER = "1267650600228229401496703205376"


def down() -> None:
    done = subprocess.run(["make", "lesson-10-down"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def fresh_stack():
    if not compose_v2():
        pytest.skip(NO_COMPOSE_V2)
    if docker("ps", "-aq", "--filter", PROJECT):
        pytest.skip("the Compose project lesson10 is up already: this test would take it down")
    try:
        yield
    finally:
        down()
        assert docker("ps", "-aq", "--filter", PROJECT) == ""
        assert docker("volume", "ls", "-q", "--filter", PROJECT) == ""
        assert docker("network", "ls", "-q", "--filter", PROJECT) == ""
        assert docker("ps", "-aq", "--filter", "label=agent-sandbox.owner=lesson10") == ""


def stack_blocks(tmp_path):
    """The shell blocks of Going further's `### The production app in Compose`, with their
    output, read by the doc's own rule (tests/support/doc_session.py reads `## ` sections)."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{STACK}\n")
    end = text.find("\n### ", start + 1)
    section = tmp_path / "stack.md"
    section.write_text(text[start + 2 : end if end > 0 else None], encoding="utf-8")  # "## ..."
    return section_steps(section, STACK.removeprefix("### "))


def test_the_production_app_as_written_on_a_fresh_make_lesson_10(fresh_stack, tmp_path):
    blocks = stack_blocks(tmp_path)
    assert blocks[0][0].body == "make lesson-10"
    assert any("kill -s SIGKILL agent1 agent2" in c.body for c, _ in blocks)
    starts = ContainerStarts("agent-sandbox.owner=lesson10")
    # A learner's terminal: no model key, no lesson settings, and not inside another make (as
    # under `make durable-test`, whose MAKEFLAGS would make `make lesson-10` a sub-make).
    unset = ("OPENAI_", "LESSON10_", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    terminal = Terminal(ROOT, env)
    try:
        for command, shown in blocks:
            if command.body.startswith("STATE=$("):
                terminal.run(WAIT_WHILE_RUNNING, timeout=300)
            printed, status = terminal.run(command.body, timeout=900)
            assert status == 0, f"docs/10:{command.line} exited {status}:\n{printed}"
            if shown is not None:
                problems = differences(shown.body, printed)
                assert not problems, f"docs/10:{command.line}\n{problems}"
        run_id = terminal.run('echo "$RUN"')[0].strip()
    finally:
        terminal.close()
    assert starts.per("agent-sandbox.request-id").get(run_id) == 1, "the program ran once"
    approve_on_the_page()


def approve_on_the_page() -> None:
    """The doc's last paragraph: Start a run on the page, decide on it there."""
    from playwright.sync_api import expect

    with headless_chromium("durable-test") as browser:
        page = browser.new_context().new_page()
        page.goto(f"{URL}/approvals")
        page.locator("button[name=start]").click()
        expect(page.locator(".call")).to_have_count(1, timeout=60_000)
        page.locator(".call button[name=approve]").click()
        expect(page.locator("#result")).to_contain_text(ANSWER, timeout=120_000)
