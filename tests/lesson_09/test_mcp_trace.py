"""Lesson 08's tools in lesson 09's trace: a research request over MCP is one trace, from the
agent's tool call through the gateway's span (client, tool, outcome, pinned hash) to the tool
server's span, and for run_python to lesson 04's `sandbox run`. They are joined through the MCP
request's own trace context (`params._meta`: `traceparent`, `tracestate`), not an HTTP header: the
gateway and the tool servers read no header for it.

The agent runs in this process (its spans in memory); the notes server, the python server and the
gateway run as processes, the commands their containers run, exporting to a local OTLP collector.
"""

import asyncio
import json
import uuid
from dataclasses import dataclass, field

import pytest
from langchain_mcp_adapters.client import MultiServerMCPClient
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

import research_agent.tools
from research_agent.tools import build_agent
from research_agent.tracing.genai_spans import instrument_langchain
from research_agent.tracing.mcp_tracing import MCPClientInstrumentor
from support.lessons import ROOT
from support.mcp_servers import NOTES_SERVER, gateway, tool_server
from support.otlp import OtlpCollector, service_name
from support.waiting import wait_for
from tests.lesson_02.test_sandbox_tool import ScriptedModel
from tests.support.agent import make_settings

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

PYTHON_SERVER = ROOT / "code" / "lesson08" / "python_server.py"
SANDBOX_IMAGE = "agent-sandbox:python"
AGENT_TOKEN = "agent-token-for-trace-tests"
QUESTION = "Why use a multi-stage Docker build?"
# A stranger's context: someone else's trace id, flags 00 ("not sampled").
STRANGER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
TRUSTED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # a sampled caller's


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # the trace ids linked to


def in_memory(exporter) -> list[Span]:
    """The agent's spans (this process's in-memory exporter), in the collector's terms."""
    return [
        Span(
            "research-agent",
            s.name,
            f"{s.context.trace_id:032x}",
            f"{s.context.span_id:016x}",
            f"{s.parent.span_id:016x}" if s.parent else None,
            dict(s.attributes),
            [f"{link.context.trace_id:032x}" for link in s.links],
        )
        for s in exporter.get_finished_spans()
    ]


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def collected(collector: OtlpCollector) -> list[Span]:
    """The spans the servers exported, by the service that sent each."""
    with collector.lock:
        requests = list(collector.requests)
    return [
        Span(
            service_name(resource),
            s.name,
            s.trace_id.hex(),
            s.span_id.hex(),
            s.parent_span_id.hex() or None,
            {a.key: value(a.value) for a in s.attributes},
            [link.trace_id.hex() for link in s.links],
        )
        for request in requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for s in scope.spans
    ]


def chain(spans: list[Span], leaf: Span) -> list[Span]:
    """`leaf` and its ancestors, root last."""
    by_id = {s.span_id: s for s in spans}
    found = [leaf]
    while found[-1].parent_id in by_id:
        found.append(by_id[found[-1].parent_id])
    return found


def show(path: list[Span]) -> str:
    return " <- ".join(f"{s.service}:{s.name}" for s in path)


def one(spans: list[Span], service: str, name: str) -> Span:
    (found,) = [s for s in spans if s.service == service and s.name == name]
    return found


@pytest.fixture(scope="module")
def docker_owner():
    """The owner label of the python server's sandboxes; none may be left at the end."""
    owner = f"lesson09-mcptrace-{uuid.uuid4().hex[:8]}"
    yield owner
    try:
        import docker

        client = docker.from_env()
    except Exception:  # no Docker here: nothing was started
        return
    label = f"agent-sandbox.owner={owner}"
    left = client.containers.list(all=True, filters={"label": label})
    for container in left:
        container.remove(force=True)
    client.close()
    assert not left, f"sandboxes left behind: {[c.name for c in left]}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_owner):
    """The collector, the notes and python servers and the gateway in front of both, every one
    tracing to the collector (spans sent within 50 ms)."""
    work = tmp_path_factory.mktemp("lesson09-mcp")
    with OtlpCollector("http/protobuf") as collector:
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": 50}
        with (
            tool_server(NOTES_SERVER, work, **otel) as notes,
            tool_server(PYTHON_SERVER, work, GATEWAY_OWNER=docker_owner, **otel) as python,
        ):
            catalog = {
                "servers": [
                    {"name": "notes", "url": notes.url + "/mcp", "tools": ["search_notes"]},
                    {"name": "python", "url": python.url + "/mcp", "tools": ["run_python"]},
                ],
                "clients": {
                    "agent": {"token_env": "TOKEN_AGENT", "tools": ["search_notes", "run_python"]},
                    "anonymous": {"tools": ["search_notes"]},
                },
            }
            with gateway(catalog, work, TOKEN_AGENT=AGENT_TOKEN, **otel) as gw:
                yield collector, gw, work, catalog


def pinned(work, server: str, tool: str) -> str:
    return json.loads((work / "pins.json").read_text())[server][tool]["sha256"]


def arrived(collector, *wanted: tuple[str, str]) -> list[Span]:
    """The collector's spans once each (service, name) is among them."""
    found: list[Span] = []

    def all_there():
        found[:] = collected(collector)
        return set(wanted) <= {(s.service, s.name) for s in found}

    wait_for(all_there, timeout=15, interval=0.1, what=f"{wanted} at the collector")
    return found


def check_gateway_span(span: Span, tool: str, server: str, work) -> None:
    assert span.attributes["mcp_gateway.client"] == "agent"
    assert span.attributes["gen_ai.tool.name"] == tool
    assert span.attributes["mcp_gateway.outcome"] == "ok"
    assert span.attributes["mcp_gateway.server"] == server
    assert span.attributes["mcp_gateway.pin.sha256"] == pinned(work, server, tool)


def assert_one_trace(everything: list[Span], path: list[Span]) -> None:
    """Every span of the request is in its trace, on every side, but the listings that opened an
    MCP session (the agent's is kept for later calls: it belongs to no one request)."""
    others = {(s.service, s.name) for s in everything if s.trace_id != path[-1].trace_id}
    assert others <= {("mcp-gateway", "tools/list")}, others


def test_a_research_request_over_mcp_is_one_trace_from_the_request_to_the_tool_server(
    stack, spans, traced_client
):
    collector, gw, work, _ = stack
    client = traced_client(MCP_GATEWAY_URL=gw.url + "/mcp", MCP_GATEWAY_TOKEN=AGENT_TOKEN)
    spans.clear()
    collector.requests.clear()
    answer = client.post("/v1/research", json={"query": QUESTION})
    assert answer.status_code == 200, answer.text
    server_side = arrived(
        collector,
        ("mcp-gateway", "gateway tools/call search_notes"),
        ("mcp-notes", "tools/call search_notes"),
    )
    everything = in_memory(spans) + server_side

    tool_span = one(everything, "mcp-notes", "tools/call search_notes")
    path = chain(everything, tool_span)
    names = [(s.service, s.name) for s in path]
    # The tool server's span, up to the request's: each a child of the one after it.
    assert names[0] == ("mcp-notes", "tools/call search_notes")
    assert names[-3:] == [
        ("research-agent", "execute_tool search_notes"),
        ("research-agent", "invoke_agent research-agent"),
        ("research-agent", "POST /v1/research"),
    ], show(path)
    gateway_span = one(everything, "mcp-gateway", "gateway tools/call search_notes")
    assert gateway_span in path, show(path)
    # The gateway's span is the agent's tool call's child: joined through _meta.
    assert gateway_span.parent_id == path[-3].span_id, show(path)
    check_gateway_span(gateway_span, "search_notes", "notes", work)
    # Below it only the gateway's own (FastMCP's server and proxy spans), then the tool server.
    below = path[: path.index(gateway_span)]
    assert {s.service for s in below[1:]} == {"mcp-gateway"}, show(path)
    assert_one_trace(everything, path)
    print("\n" + show(path))


def needs_the_sandbox_image() -> None:
    try:
        import docker

        client = docker.from_env()
        client.images.get(SANDBOX_IMAGE)
    except Exception as exc:
        pytest.skip(f"run_python needs Docker and {SANDBOX_IMAGE} (make sandbox-image): {exc}")
    client.close()


def test_run_python_over_mcp_is_one_trace_down_to_lesson_04s_sandbox_span(
    stack, spans, monkeypatch
):
    collector, gw, work, _ = stack
    needs_the_sandbox_image()
    instrument_langchain()  # what create_app's instrument does while tracing is on
    MCPClientInstrumentor().instrument()
    connection = {
        "transport": "streamable_http",
        "url": gw.url + "/mcp",
        "headers": {"Authorization": f"Bearer {AGENT_TOKEN}"},
    }
    tools = asyncio.run(MultiServerMCPClient({"gateway": connection}).get_tools())
    (run_python,) = [t for t in tools if t.name == "run_python"]
    monkeypatch.setattr(research_agent.tools, "optional_tools", lambda settings: [run_python])
    agent = build_agent(make_settings(), model=ScriptedModel(code="print(6 * 7)"))
    spans.clear()
    collector.requests.clear()
    result = asyncio.run(agent.research("What is six times seven?"))
    assert "42" in result["response"], result["response"]
    server_side = arrived(
        collector,
        ("mcp-gateway", "gateway tools/call run_python"),
        ("mcp-python", "tools/call run_python"),
        ("mcp-python", "sandbox run"),
    )
    everything = in_memory(spans) + server_side

    sandbox = one(everything, "mcp-python", "sandbox run")
    path = chain(everything, sandbox)
    assert [(s.service, s.name) for s in path[:2]] == [
        ("mcp-python", "sandbox run"),
        ("mcp-python", "tools/call run_python"),
    ], show(path)
    assert [(s.service, s.name) for s in path[-2:]] == [
        ("research-agent", "execute_tool run_python"),
        ("research-agent", "invoke_agent research-agent"),
    ], show(path)
    gateway_span = one(everything, "mcp-gateway", "gateway tools/call run_python")
    assert gateway_span.parent_id == path[-2].span_id, show(path)
    check_gateway_span(gateway_span, "run_python", "python", work)
    assert sandbox.attributes["sandbox.exit_code"] == 0
    assert "print(6 * 7)" not in str([s.attributes for s in everything])  # never the code
    assert_one_trace(everything, path)
    print("\n" + show(path))


def test_an_anonymous_callers_trace_context_is_a_link_and_never_reaches_the_tool_server(stack):
    """As at lesson 09's edge: a context from a client the gateway cannot name is not joined. The
    call has a trace of the gateway's own, with the stranger's as a link, and the tool server's
    span is in the gateway's trace."""
    collector, gw, work, _ = stack
    collector.requests.clear()

    assert not call_with_context(gw.url + "/mcp", STRANGER).isError
    found = arrived(
        collector,
        ("mcp-gateway", "gateway tools/call search_notes"),
        ("mcp-notes", "tools/call search_notes"),
    )
    stranger = STRANGER.split("-")[1]
    gateway_span = one(found, "mcp-gateway", "gateway tools/call search_notes")
    assert gateway_span.parent_id is None
    assert gateway_span.links == [stranger]
    assert gateway_span.attributes["mcp_gateway.client"] == "anonymous"
    tool_span = one(found, "mcp-notes", "tools/call search_notes")
    assert tool_span.trace_id == gateway_span.trace_id
    assert gateway_span in chain(found, tool_span)
    assert stranger not in {s.trace_id for s in found}


def call_with_context(
    url: str, traceparent: str, token: str | None = None, tool: str = "search_notes"
):
    """One call with `traceparent` in its `_meta`, on a session of its own: its result."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    arguments = {"query": QUESTION} if tool == "search_notes" else {"code": "print(1)"}

    async def call():
        async with (
            streamablehttp_client(url, headers=headers) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await session.call_tool(tool, arguments, meta={"traceparent": traceparent})

    return asyncio.run(call())


def test_a_refused_call_is_a_gateway_span_with_its_outcome_and_reaches_no_server(stack):
    collector, gw, _, _ = stack
    collector.requests.clear()
    result = call_with_context(gw.url + "/mcp", TRUSTED, tool="run_python")  # not anonymous's
    assert result.isError
    (span,) = [
        s
        for s in arrived(collector, ("mcp-gateway", "gateway tools/call run_python"))
        if s.name == "gateway tools/call run_python"
    ]
    assert span.attributes["mcp_gateway.client"] == "anonymous"
    assert span.attributes["mcp_gateway.outcome"] == "not_allowed"
    assert span.attributes["error.type"] == "not_allowed"
    assert not [s for s in collected(collector) if s.service == "mcp-python"]


def test_a_gateway_that_does_not_trace_passes_on_only_a_trusted_callers_context(stack, tmp_path):
    """Tracing off at the gateway, on at the tool server: the agent's context goes on as it came
    (the tool server's span is the caller's child), an anonymous caller's is taken out all the
    same (the tool server's span starts a trace of its own)."""
    collector, _, _, catalog = stack
    # Named apart from the traced gateway of `stack`, whose spans of earlier tests may still be
    # arriving at the shared collector (its exporter sends in batches).
    untraced_name = "mcp-gateway-untraced"
    with gateway(
        catalog, tmp_path, TOKEN_AGENT=AGENT_TOKEN, OTEL_SERVICE_NAME=untraced_name
    ) as untraced:
        for token, context in ((AGENT_TOKEN, TRUSTED), (None, STRANGER)):
            collector.requests.clear()
            assert not call_with_context(untraced.url + "/mcp", context, token).isError
            (tool_span,) = [
                s
                for s in arrived(collector, ("mcp-notes", "tools/call search_notes"))
                if s.name == "tools/call search_notes"
            ]
            _, trace_id, span_id, _ = context.split("-")
            if token:
                assert (tool_span.trace_id, tool_span.parent_id) == (trace_id, span_id)
            else:
                assert tool_span.trace_id != trace_id and tool_span.parent_id is None
        assert not [s for s in collected(collector) if s.service == untraced_name]


def test_while_tracing_is_off_the_mcp_client_is_the_sdks(client_off):
    """An app built with tracing off patches nothing: a tool call is sent as the SDK sends it."""
    assert not hasattr(ClientSession.call_tool, "__wrapped__")
    assert not MCPClientInstrumentor().is_instrumented_by_opentelemetry
