"""Lesson 09 in containers (`make traces-test`): lesson 03's stack with the traces override, its
write-only ingest and the Phoenix viewer, as `make lesson-09` starts it (the `lesson09` fixture:
a Compose project of its own, `down` leaves nothing). A question sent through the HAProxy edge is
one trace in the viewer, from the request through the agent, its model calls, its tool and Redis,
named by the answer's `traceresponse` header; a caller's `traceparent` is kept only from inside
the network or from a trusted address; the trace of docs/09's "Try it on the stack" is what its
solution says; headless Chromium finds the trace as the lesson says and saves a screenshot of it
(to .build/; `make traces-screenshot` writes the one the lesson shows)."""

import json
import os
import shutil
import subprocess
import uuid

import pytest

from support.lessons import ROOT
from tests.support.browser import headless_chromium
from tests.support.docker_cli import NO_COMPOSE_V2, compose_v2

pytestmark = pytest.mark.container

FILES = ["-f", "research-agent/docker-compose.yml", "-f", "code/lesson09/compose.traces.yaml"]
# The question `make lesson-09` prints, asked once, by the browser test: a trace of one request.
QUESTION = "Why use a multi-stage Docker build?"
VICTIM_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
SCREENSHOT = os.environ.get("SCREENSHOT", str(ROOT / ".build" / "09-trace.png"))
DEFAULT_PROJECT = "UHJvamVjdDox"  # Phoenix's "default" project, Project:1


def traceparent(trace_id: str, flags: str = "01") -> str:
    return f"00-{trace_id}-b7ad6b7169203331-{flags}"


def root(spans: list[dict]) -> dict:
    (request,) = [s for s in spans if s["name"] == "POST /v1/research"]
    return request


@pytest.mark.parametrize("command", [("docker", "compose"), ("docker-compose",)])
def test_both_compose_versions_read_the_override(command):
    if not shutil.which(command[0]):
        pytest.fail(f"{command[0]} is missing: make traces-test installs it")
    if tuple(command) == ("docker", "compose") and not compose_v2():
        pytest.fail(NO_COMPOSE_V2)  # make traces-test installs it (make docker-tools)
    merged = subprocess.run(
        [*command, "-p", "lesson09-config", *FILES, "config"],
        cwd=ROOT,
        env={**os.environ, "AGENT_PORT": "8090"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT: http://ingest:4318" in merged.stdout
    assert "REDIS_URL: redis://redis:6379/0" in merged.stdout  # lesson 03's settings are kept


def test_a_question_through_the_edge_is_one_trace_in_the_viewer(lesson09):
    answer = lesson09.ask("How do health checks work?")
    assert answer.status_code == 200, answer.text
    trace_id = lesson09.trace_of(answer)
    spans = lesson09.wait_for_trace(
        trace_id,
        "invoke_agent research-agent",
        "chat offline-research-model",
        "execute_tool search_docs",
    )
    names = {s["name"] for s in spans}
    assert any(n in names for n in ("GET", "SET", "EVALSHA")), names  # the cache and the quotas
    assert root(spans)["parentId"] is None  # a root: Phoenix's default Spans view lists it


@pytest.mark.parametrize("flags", ["01", "00"])
def test_a_callers_traceparent_through_the_edge_starts_a_trace_of_its_own(lesson09, flags):
    """A victim's trace id in a stranger's `traceparent`: the spans go to a new trace, not the
    victim's; and flags 00 ("not sampled") no longer keep the request out of the trace store."""
    headers = {"traceparent": traceparent(VICTIM_TRACE_ID, flags)}
    answer = lesson09.ask(f"What does docker stop do? ({flags})", headers)
    assert answer.status_code == 200, answer.text
    trace_id = lesson09.trace_of(answer)
    assert trace_id != VICTIM_TRACE_ID
    spans = lesson09.wait_for_trace(trace_id, "invoke_agent research-agent")
    assert root(spans)["parentId"] is None
    assert lesson09.spans(VICTIM_TRACE_ID) == []


def test_a_caller_inside_the_network_keeps_its_trace(lesson09):
    trace_id = uuid.uuid4().hex
    assert lesson09.ask_inside("What is a bind mount?", traceparent(trace_id)) == 200
    spans = lesson09.wait_for_trace(trace_id, "invoke_agent research-agent")
    assert root(spans)["parentId"] == "b7ad6b7169203331"


def test_an_address_in_trace_trusted_sources_keeps_its_trace(lesson09):
    trace_id = uuid.uuid4().hex
    lesson09.recreate("edge", TRACE_TRUSTED_SOURCES="0.0.0.0/0 ::/0")
    try:
        answer = lesson09.ask("What is a named volume?", {"traceparent": traceparent(trace_id)})
        assert answer.status_code == 200, answer.text
        assert lesson09.trace_of(answer) == trace_id
        lesson09.wait_for_trace(trace_id, "invoke_agent research-agent")
    finally:
        lesson09.recreate("edge")


def test_the_challenge_a_search_timeout_and_a_not_sampled_traceparent(lesson09):
    """docs/09's "Try it on the stack" (Going further; once its challenge) as written:
    SEARCH_TIMEOUT_SECONDS=0 given to `make lesson-09`, a question not asked before (a repeat is a
    cache hit: no search at all), flags 00. What the solution says: a 504, the request's span in
    error, no tool span (the search never started), the model called twice, and a trace of its
    own whatever the flags. (With 0.001 s the search sometimes started and sometimes did not, as
    the executor's thread picked it up in time.)"""
    lesson09.recreate("agent", SEARCH_TIMEOUT_SECONDS="0")
    try:
        headers = {"traceparent": traceparent(VICTIM_TRACE_ID, "00")}
        answer = lesson09.ask("How do I keep secrets out of an image?", headers)
        assert answer.status_code == 504, answer.text
        assert answer.json()["error"]["type"] == "search_timeout"
        trace_id = lesson09.trace_of(answer)
        chat = "chat offline-research-model"
        spans = lesson09.wait_for_trace(trace_id, "invoke_agent research-agent", chat, chat)
        request = root(spans)
        assert request["statusCode"] == "ERROR"
        assert request["attributes"]["error"]["type"] == "504"
        assert request["attributes"]["http"]["response"]["status_code"] == 504
        assert not [s for s in spans if s["name"].startswith("execute_tool")]  # nothing ran
        assert sum(s["name"].startswith("chat ") for s in spans) == 2  # the model read the error
    finally:
        lesson09.recreate("agent")
    assert lesson09.ask("How do I keep secrets out of an image?").status_code == 200


def open_page(page, url: str, attempts: int = 3) -> None:
    """Open one of Phoenix's project pages, again if it came up without its tabs: on a busy
    machine the page can stop at "Server disconnected" when its first requests are slow. The
    page counts as open when its tabs show, not at the browser's `load` event: on a loaded
    machine that can take longer than Playwright's 30 s for Phoenix's scripts, and it proves
    nothing the tabs do not."""
    from playwright.sync_api import TimeoutError as PageTimeout

    for attempt in range(attempts):
        try:
            page.goto(url, wait_until="commit", timeout=60_000)
            page.get_by_role("tab", name="Traces").wait_for(timeout=60_000)
            return
        except PageTimeout:
            if attempt == attempts - 1:
                raise


def test_the_viewer_shows_the_trace_in_a_browser(lesson09):
    from playwright.sync_api import expect

    answer = lesson09.ask(QUESTION)  # as `make lesson-09` prints it: no traceparent
    assert answer.status_code == 200 and answer.json()["cached"] is False, answer.text
    trace_id = lesson09.trace_of(answer)
    # The page shows what Phoenix holds when it loads: wait until the whole trace is in.
    lesson09.wait_for_trace(trace_id, "invoke_agent research-agent", "execute_tool search_docs")
    with headless_chromium("traces-test") as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 900})
        # The way docs/09 gives: the project's Traces tab lists each trace by its root...
        open_page(page, f"{lesson09.viewer}/projects/{DEFAULT_PROJECT}")
        page.get_by_role("tab", name="Traces").click()
        expect(page.get_by_text("POST /v1/research").first).to_be_visible(timeout=60_000)
        # ...and the trace's own address opens its tree.
        trace_page = f"{lesson09.viewer}/projects/{DEFAULT_PROJECT}/traces/{trace_id}"
        page.goto(trace_page, wait_until="commit", timeout=60_000)  # open when the tree shows:
        for name in ("invoke_agent research-agent", "execute_tool search_docs"):
            expect(page.get_by_text(name).first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("chat offline-research-model").first).to_be_visible()
        # The agent's span selected: its GenAI attributes beside the tree, which the page asks
        # Phoenix for only now (16 s after the click on a machine at load 25: as long as the
        # waits above).
        page.get_by_text("invoke_agent research-agent").first.click()
        expect(page.get_by_text("gen_ai.agent.name").first).to_be_visible(timeout=60_000)
        os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
        page.screenshot(path=SCREENSHOT)
    assert os.path.getsize(SCREENSHOT) > 10_000
    assert json.dumps(lesson09.spans(trace_id)).count('"POST /v1/research"') == 1
