"""Lesson 09 in containers (`make traces-test`): lesson 03's stack with the traces override and
the Phoenix viewer, as `make lesson-09` starts it. A question sent through the HAProxy edge with a
fixed traceparent is one trace in the viewer, from the edge's request through the agent, its
model calls, its tool and Redis; headless Chromium opens it and saves the screenshot the lesson
shows. `down -v` leaves no container, network or volume behind."""

import os
import shutil
import subprocess

import httpx
import pytest

from tests.support.docker_cli import docker
from tests.support.lessons import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.container

PROJECT = "lesson09-test"
FILES = ["-f", "research-agent/docker-compose.yml", "-f", "deploy/lesson09/compose.traces.yaml"]
# The question and trace id `make lesson-09` prints, asked once, by the browser test: a trace that
# holds one request, not a cache hit. The span-tree test asks its own question in its own trace.
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
QUESTION = "Why use a multi-stage Docker build?"
TREE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TREE_QUESTION = "How do health checks work?"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = os.environ.get("SCREENSHOT", str(ROOT / "docs" / "images" / "09-trace.png"))
# Phoenix files spans without a project name under its first project, "default": Project:1.
DEFAULT_PROJECT = "UHJvamVjdDox"


def compose(*args: str, env: dict, command=("docker", "compose"), timeout=900) -> str:
    result = subprocess.run(
        [*command, "-p", PROJECT, *FILES, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def leftovers() -> list[str]:
    label = f"label=com.docker.compose.project={PROJECT}"
    return [
        *docker("ps", "-aq", "--filter", label).split(),
        *docker("network", "ls", "-q", "--filter", label).split(),
        *docker("volume", "ls", "-q", "--filter", label).split(),
    ]


@pytest.fixture(scope="module")
def stack():
    env = {"AGENT_PORT": str(free_port()), "VIEWER_PORT": str(free_port())}
    try:
        compose("up", "--build", "-d", "--wait", env=env)
        yield {
            "edge": f"http://127.0.0.1:{env['AGENT_PORT']}",
            "viewer": f"http://127.0.0.1:{env['VIEWER_PORT']}",
            "env": env,
        }
    finally:
        compose("down", "-v", "--remove-orphans", env=env)
    assert leftovers() == []


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-b7ad6b7169203331-01"


def span_names(viewer: str, trace_id: str) -> set[str]:
    """The names of the spans Phoenix holds for the trace (asked through its GraphQL API)."""
    query = {
        "query": "query($id: ID!, $t: ID!) { node(id: $id) { ... on Project { trace(traceId: $t) "
        "{ spans(first: 100) { edges { node { name parentId spanKind } } } } } } }",
        "variables": {"id": DEFAULT_PROJECT, "t": trace_id},
    }
    body = httpx.post(f"{viewer}/graphql", json=query, timeout=10).json()
    trace = ((body.get("data") or {}).get("node") or {}).get("trace")
    return {e["node"]["name"] for e in trace["spans"]["edges"]} if trace else set()


@pytest.mark.parametrize("command", [("docker", "compose"), ("docker-compose",)])
def test_both_compose_versions_read_the_override(command):
    if not shutil.which(command[0]):
        pytest.fail(f"{command[0]} is missing: make traces-test installs it")
    merged = compose("config", env={"AGENT_PORT": "8090"}, command=command, timeout=60)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT: http://viewer:6006" in merged
    assert "REDIS_URL: redis://redis:6379/0" in merged  # lesson 03's settings are kept


def test_a_question_through_the_edge_is_one_trace_in_the_viewer(stack):
    answer = httpx.post(
        f"{stack['edge']}/v1/research",
        json={"query": TREE_QUESTION},
        headers={"traceparent": traceparent(TREE_TRACE_ID)},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text

    expected = {
        "POST /v1/research",
        "invoke_agent research-agent",
        "chat offline-research-model",
        "execute_tool search_docs",
    }
    names = set()

    def arrived() -> bool:
        names.update(span_names(stack["viewer"], TREE_TRACE_ID))
        return expected <= names

    wait_for(arrived, timeout=30, interval=0.5, what=f"{expected} in Phoenix (seen: {names})")
    assert any(n in names for n in ("GET", "SET", "EVALSHA")), names  # the cache and the quotas


def test_the_viewer_shows_the_trace_in_a_browser(stack):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: make traces-test installs Debian's chromium")
    from playwright.sync_api import expect, sync_playwright

    answer = httpx.post(
        f"{stack['edge']}/v1/research",
        json={"query": QUESTION},
        headers={"traceparent": traceparent(TRACE_ID)},
        timeout=60,
    )
    assert answer.status_code == 200 and answer.json()["cached"] is False, answer.text
    # The page shows what Phoenix holds when it loads: wait until the whole trace is in.
    wait_for(
        lambda: "invoke_agent research-agent" in span_names(stack["viewer"], TRACE_ID),
        timeout=30,
        interval=0.5,
        what="the trace in Phoenix",
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 900})
            page.goto(f"{stack['viewer']}/projects/{DEFAULT_PROJECT}/traces/{TRACE_ID}")
            for name in ("invoke_agent research-agent", "execute_tool search_docs"):
                expect(page.get_by_text(name).first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("chat offline-research-model").first).to_be_visible()
            # The agent's span selected: its GenAI attributes beside the tree.
            page.get_by_text("invoke_agent research-agent").first.click()
            expect(page.get_by_text("gen_ai.agent.name").first).to_be_visible(timeout=10_000)
            page.screenshot(path=SCREENSHOT)
        finally:
            browser.close()
    assert os.path.getsize(SCREENSHOT) > 10_000
