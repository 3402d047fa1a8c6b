"""Fixtures for lesson 09's tests: an in-memory span exporter installed as the process's provider
for one test, and a local OTLP collector (HTTP or gRPC) that keeps what it is sent."""

import json
import os
import subprocess
import uuid
from collections import Counter

import httpx
import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from research_agent.app import create_app
from research_agent.settings import variables
from support.lessons import ROOT
from support.otlp import OtlpCollector
from support.ports import free_port
from support.waiting import answers_200, wait_for
from tests.support.agent import make_settings
from tests.support.docker_cli import docker
from tests.support.tracing import reset_tracing


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in variables():
        monkeypatch.delenv(name, raising=False)
    for name in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spans():
    """The spans finished during the test, kept in memory (tracing on, nothing sent anywhere)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_tracing()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_tracing()


@pytest.fixture
def traced_client(spans):
    """traced_client(**settings) -> a TestClient of an app built while tracing is on."""
    clients = []

    def open_client(**overrides):
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client

    yield open_client
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client_off():
    """A TestClient of an app built while tracing is off."""
    reset_tracing()
    with TestClient(create_app(make_settings()), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def collector():
    with OtlpCollector("http/protobuf") as c:
        yield c


@pytest.fixture
def grpc_collector():
    with OtlpCollector("grpc") as c:
        yield c


@pytest.fixture
def start_agent(server_process):
    """start_agent(**settings) -> `python main.py`, as the images run it, ready on a free port."""
    import sys

    from support.lessons import AGENT_DIR

    def start(**settings):
        return server_process(
            [sys.executable, "main.py"], cwd=AGENT_DIR, ready_path="/ready", **settings
        )

    return start


# --- The container suite (`make traces-test`): lesson 09's stack as `make lesson-09` starts it.

# Phoenix files spans without a project name under its first project, "default": Project:1.
DEFAULT_PROJECT = "UHJvamVjdDox"
SPANS = (
    "query($id: ID!, $t: ID!) { node(id: $id) { ... on Project { trace(traceId: $t) {"
    " spans(first: 100) { edges { node { name spanId parentId statusCode attributes } } } } } } }"
)


class Lesson09:
    """`make lesson-09`'s Compose project under a name of its own, on free ports: its edge, its
    viewer (on 127.0.0.1, as the learner has it) and the spans Phoenix holds."""

    FILES = ("-f", "research-agent/docker-compose.yml", "-f", "code/lesson09/compose.traces.yaml")

    def __init__(self):
        self.project = f"lesson09-{uuid.uuid4().hex[:8]}"
        self.env = {"AGENT_PORT": str(free_port()), "VIEWER_PORT": str(free_port())}
        self.edge = f"http://127.0.0.1:{self.env['AGENT_PORT']}"
        self.viewer = f"http://127.0.0.1:{self.env['VIEWER_PORT']}"

    def compose(self, *args: str, env: dict | None = None, timeout: float = 900) -> str:
        result = subprocess.run(
            ["docker", "compose", "-p", self.project, *self.FILES, *args],
            cwd=ROOT,
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    def recreate(self, service: str, **env: str) -> None:
        """The service again, with these variables in Compose's environment (or without them),
        once the edge routes to it: a recreated container has a new address, which HAProxy finds
        at its next resolution and health check, after Compose's --wait is already satisfied."""
        self.compose("up", "-d", "--no-deps", "--wait", "--force-recreate", service, env=env)

        wait_for(  # False while the edge itself, recreated, is not listening yet
            lambda: answers_200(f"{self.edge}/ready", timeout=10),
            timeout=120,
            interval=0.5,
            what=f"the edge routing to the recreated {service}",
        )

    def container(self, service: str) -> str:
        return docker(
            "ps", "-q",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return [
            *docker("ps", "-aq", "--filter", label).split(),
            *docker("network", "ls", "-q", "--filter", label).split(),
            *docker("volume", "ls", "-q", "--filter", label).split(),
        ]

    def forget_answers(self) -> None:
        """Empty the stack's answer cache: a question asked again runs the agent again (tests that
        ask the doc's question each want its whole trace, in whatever order they run)."""
        forget = "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end"
        docker(
            "exec", self.container("redis"),
            "redis-cli", "EVAL", forget, "0", "research-agent:answer:*",
        )  # fmt: skip

    def ask(self, question: str, headers: dict | None = None):
        """POST /v1/research through the edge, as a caller outside does."""
        url = f"{self.edge}/v1/research"
        return httpx.post(url, json={"query": question}, headers=headers or {}, timeout=60)

    def ask_inside(self, question: str, traceparent: str) -> int:
        """POST /v1/research from another container on the agent's network (an internal
        service), straight to agent:8000 with a `traceparent`: the status it got."""
        script = (
            "import json, sys, urllib.request as u\n"
            "r = u.Request('http://agent:8000/v1/research', method='POST', "
            "data=json.dumps({'query': sys.argv[1]}).encode(), "
            "headers={'content-type': 'application/json', 'traceparent': sys.argv[2]})\n"
            "print(u.urlopen(r, timeout=60).status)\n"
        )
        name = f"{self.project}-inside-{uuid.uuid4().hex[:6]}"
        options = ["--rm", "--network", f"{self.project}_back", "--name", name]
        command = ["python:3.11-slim", "python3", "-c", script, question, traceparent]
        return int(docker("run", *options, *command, timeout=120))

    def spans(self, trace_id: str) -> list[dict]:
        """The spans Phoenix holds for the trace, asked through its GraphQL API on 127.0.0.1."""
        query = {"query": SPANS, "variables": {"id": DEFAULT_PROJECT, "t": trace_id}}
        body = httpx.post(f"{self.viewer}/graphql", json=query, timeout=10).json()
        found = ((body.get("data") or {}).get("node") or {}).get("trace")
        spans = [edge["node"] for edge in found["spans"]["edges"]] if found else []
        for span in spans:
            if isinstance(span["attributes"], str):
                span["attributes"] = json.loads(span["attributes"] or "{}")
        return spans

    @staticmethod
    def trace_of(response) -> str:
        """The trace an answer's `traceresponse` header names: 00-<trace id>-<span id>-<flags>."""
        return response.headers["traceresponse"].split("-")[1]

    def names(self, trace_id: str) -> set[str]:
        return {span["name"] for span in self.spans(trace_id)}

    def wait_for_trace(self, trace_id: str, *names: str, timeout: float = 30) -> list[dict]:
        """The trace's spans once every name is among them, as many times as it is given (and
        its root, the request's)."""
        wanted = Counter(["POST /v1/research", *names])
        found: list[dict] = []

        def arrived():
            found[:] = self.spans(trace_id)
            return Counter(span["name"] for span in found) >= wanted

        try:
            wait_for(
                arrived, timeout=timeout, interval=0.5, what=f"{dict(wanted)} in trace {trace_id}"
            )
        except TimeoutError as missing:  # what arrived, and what the sender and the ingest logged
            logs = self.compose("logs", "--no-color", "--tail", "30", "agent", "ingest")
            seen = sorted(span["name"] for span in found)
            raise AssertionError(f"{missing}; the trace has {seen}\n{logs}") from None
        return found


@pytest.fixture(scope="session")
def lesson09():
    """Lesson 09's stack, up once for the container suite; `down` afterwards leaves nothing."""
    stack = Lesson09()
    try:
        stack.compose("up", "--build", "-d", "--wait")
        yield stack
    finally:
        stack.compose("down", "-v", "--remove-orphans")
        # The agent's image, built for this project alone (its name starts with the project's).
        built = docker("images", "-q", "--filter", f"reference={stack.project}*").split()
        if built:
            docker("rmi", *set(built), check=False)
    assert stack.leftovers() == []
