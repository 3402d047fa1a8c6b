"""Traces of a research request (research_agent/tracing/otel.py and its GenAI spans,
genai_spans.py): the span tree and its GenAI attributes, kept in memory; the standard OTEL_*
variables, against a local collector over both protocols; and nothing at all when no endpoint is
set."""

import json
import logging
import os
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from opentelemetry.trace import SpanKind, StatusCode

from research_agent.settings import variables
from support.lessons import AGENT_DIR
from support.otlp import OtlpCollector
from support.waiting import wait_for
from tests.support.metrics import metric
from tests.support.openai_stub import ChatCompletionsStub

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
QUESTION = "How do I make a Docker image smaller?"


def by_name(spans, prefix):
    return [s for s in spans if s.name.startswith(prefix)]


def parent_of(span, spans):
    return next((s for s in spans if s.context.span_id == span.parent.span_id), None)


def test_one_request_is_one_trace_edge_agent_model_tool_redis(traced_client, spans, fresh_redis):
    client = traced_client(REDIS_URL=fresh_redis.url)
    spans.clear()  # the start-up's own trace (the cache's PING)
    answer = client.post(
        "/v1/research", json={"query": QUESTION}, headers={"traceparent": TRACEPARENT}
    )
    assert answer.status_code == 200, answer.text
    finished = spans.get_finished_spans()

    # Every span belongs to the caller's trace: the edge's traceparent was honoured.
    assert {format(s.context.trace_id, "032x") for s in finished} == {TRACE_ID}
    (server,) = [s for s in finished if s.kind == SpanKind.SERVER]
    assert server.name == "POST /v1/research"
    assert format(server.parent.span_id, "016x") == PARENT_ID
    status = server.attributes.get(
        "http.response.status_code", server.attributes.get("http.status_code")
    )
    assert status == 200

    (agent,) = by_name(finished, "invoke_agent ")
    assert agent.name == "invoke_agent research-agent"
    assert agent.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert agent.attributes["gen_ai.agent.name"] == "research-agent"
    assert agent.attributes["gen_ai.request.model"] == "offline-research-model"
    assert agent.parent.span_id == server.context.span_id

    chats = by_name(finished, "chat ")
    assert len(chats) == 2  # search, then answer
    for chat in chats:
        assert chat.name == "chat offline-research-model"
        assert chat.kind == SpanKind.CLIENT
        assert chat.parent.span_id == agent.context.span_id
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"]
        assert chat.attributes["gen_ai.request.model"] == "offline-research-model"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    assert agent.attributes["gen_ai.usage.output_tokens"] == sum(
        c.attributes["gen_ai.usage.output_tokens"] for c in chats
    )

    (tool,) = by_name(finished, "execute_tool ")
    assert tool.name == "execute_tool search_docs"
    assert tool.parent.span_id == agent.context.span_id
    assert tool.attributes["gen_ai.tool.name"] == "search_docs"
    assert tool.attributes["gen_ai.tool.call.id"]
    # In time order: model, tool, model.
    assert chats[0].end_time <= tool.start_time <= tool.end_time <= chats[1].start_time

    # The cache and the quotas talk to Redis: client spans in the same trace, beside the agent.
    redis = [
        s
        for s in finished
        if s.attributes.get("db.system") == "redis" or s.attributes.get("db.system.name") == "redis"
    ]
    assert redis, [s.name for s in finished]
    assert all(s.kind == SpanKind.CLIENT for s in redis)

    # No question or answer text anywhere by default.
    text = json.dumps([dict(s.attributes) for s in finished])
    assert QUESTION not in text
    assert answer.json()["response"][:40] not in text


def test_a_cache_hit_is_a_redis_span_and_no_agent(traced_client, spans, fresh_redis):
    client = traced_client(REDIS_URL=fresh_redis.url)
    assert client.post("/v1/research", json={"query": QUESTION}).status_code == 200
    spans.clear()
    assert client.post("/v1/research", json={"query": QUESTION}).status_code == 200
    names = [s.name for s in spans.get_finished_spans()]
    assert not by_name(spans.get_finished_spans(), "invoke_agent"), names
    assert any(
        s.attributes.get("db.statement", "").startswith("GET") or s.name.startswith("GET")
        for s in spans.get_finished_spans()
    ), names


def test_the_stream_has_the_same_tree(traced_client, spans):
    client = traced_client()
    with client.stream("POST", "/v1/research/stream", json={"query": QUESTION}) as stream:
        body = "".join(stream.iter_text())
    assert "[DONE]" in body
    finished = spans.get_finished_spans()
    (agent,) = by_name(finished, "invoke_agent ")
    assert len(by_name(finished, "chat ")) == 2
    assert all(c.parent.span_id == agent.context.span_id for c in by_name(finished, "chat "))
    assert len(by_name(finished, "execute_tool ")) == 1


def test_the_handler_hears_the_agent_and_its_calls_not_the_graph_nodes(
    traced_client, spans, monkeypatch
):
    """LangChain dispatches each callback to each handler: the graph's nodes, which make no span,
    were most of them. The handler is given only the runs LangChain configures."""
    from research_agent.tracing.genai_spans import GenAIHandler

    heard = []
    for event in ("on_chain_start", "on_chat_model_start", "on_tool_start"):
        original = getattr(GenAIHandler, event)

        def spy(self, *args, _original=original, _event=event, **kwargs):
            heard.append(_event)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(GenAIHandler, event, spy)
    client = traced_client()
    assert client.post("/v1/research", json={"query": QUESTION}).status_code == 200
    assert sorted(heard) == [
        "on_chain_start",
        "on_chat_model_start",
        "on_chat_model_start",
        "on_tool_start",
    ]
    assert len(spans.get_finished_spans()) == 5  # the server's, the agent's and its three calls


def test_content_capture_is_a_setting(traced_client, spans):
    client = traced_client(OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=True)
    assert client.post("/v1/research", json={"query": QUESTION}).status_code == 200
    first = by_name(spans.get_finished_spans(), "chat ")[0]
    assert QUESTION in first.attributes["gen_ai.input.messages"]
    (tool,) = by_name(spans.get_finished_spans(), "execute_tool ")
    assert "gen_ai.tool.call.arguments" in tool.attributes
    # The model's first answer is a tool call: its name, id and arguments are in the span, so a
    # trace shows a call that was asked for even when it never ran (lesson 11 reads it).
    (asked,) = json.loads(first.attributes["gen_ai.output.messages"])
    (call,) = asked["tool_calls"]
    assert call["name"] == "search_docs" and call["arguments"] == {"query": QUESTION}
    assert call["id"] == tool.attributes["gen_ai.tool.call.id"]


def test_a_request_the_sampler_drops_records_nothing_and_logs_no_error(
    traced_client, spans, caplog
):
    """The caller's traceparent says "not sampled" (flags 00): every span is a no-op span, which
    has no attributes; the model-call handler must not trip over it (an error per model call)."""
    client = traced_client()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}
    with caplog.at_level(logging.WARNING):
        response = client.post("/v1/research", json={"query": QUESTION}, headers=headers)
    assert response.status_code == 200
    assert spans.get_finished_spans() == ()
    assert [r.getMessage() for r in caplog.records if "callback" in r.getMessage()] == []


@pytest.mark.parametrize("flags", ["01", "00"])
def test_a_caller_the_edge_did_not_trust_is_a_link_not_the_parent(traced_client, spans, flags):
    """The edge renames the `traceparent` of a caller it does not trust (research-agent/
    haproxy.cfg): the request starts a trace of its own, sampled by this service's sampler whatever
    the caller's flags said, with the caller's context as a link; `traceresponse` names it."""
    client = traced_client()
    headers = {"x-caller-traceparent": f"00-{TRACE_ID}-{PARENT_ID}-{flags}"}
    answer = client.post("/v1/research", json={"query": QUESTION}, headers=headers)
    assert answer.status_code == 200, answer.text
    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind == SpanKind.SERVER]
    assert server.parent is None
    trace_id = format(server.context.trace_id, "032x")
    assert trace_id != TRACE_ID
    assert {format(s.context.trace_id, "032x") for s in finished} == {trace_id}
    assert len(by_name(finished, "chat ")) == 2  # the whole request, recorded
    (link,) = server.links
    assert format(link.context.trace_id, "032x") == TRACE_ID
    assert format(link.context.span_id, "016x") == PARENT_ID
    span_id = format(server.context.span_id, "016x")
    version, *ids, sampled = answer.headers["traceresponse"].split("-")
    assert ids == [trace_id, span_id] and int(sampled, 16) & 1  # (03: its trace id is random)


def test_a_trusted_callers_trace_is_joined_and_named_in_the_answer(traced_client, spans):
    client = traced_client()
    answer = client.post(
        "/v1/research", json={"query": QUESTION}, headers={"traceparent": TRACEPARENT}
    )
    (server,) = [s for s in spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert format(server.parent.span_id, "016x") == PARENT_ID and not server.links
    span_id = format(server.context.span_id, "016x")
    assert answer.headers["traceresponse"] == f"00-{TRACE_ID}-{span_id}-01"


def test_probes_and_an_untraced_service_answer_without_traceresponse(traced_client, client_off):
    assert "traceresponse" not in traced_client().get("/health").headers
    assert "traceresponse" not in client_off.post("/v1/research", json={"query": "x"}).headers


def test_no_api_key_in_any_span(traced_client, spans):
    key = "k-0123456789abcdef0123456789abcdef"
    client = traced_client(API_KEYS=f"alice:{key}")
    headers = {"Authorization": f"Bearer {key}", "traceparent": TRACEPARENT}
    assert client.post("/v1/research", json={"query": "docker"}, headers=headers).status_code == 200
    finished = spans.get_finished_spans()
    assert finished
    dumped = json.dumps([{**dict(s.attributes), "name": s.name} for s in finished]) + "".join(
        json.dumps(dict(s.resource.attributes)) for s in finished
    )
    assert key not in dumped


def test_a_failed_tool_call_is_an_error_span(traced_client, spans):
    client = traced_client(SEARCH_BACKEND="duckduckgo", SEARCH_TIMEOUT_SECONDS=0.001)
    client.post("/v1/research", json={"query": QUESTION})
    (tool, *_) = by_name(spans.get_finished_spans(), "execute_tool ")
    assert tool.status.status_code == StatusCode.ERROR
    assert tool.attributes["error.type"]


class HeaderStub(ChatCompletionsStub):
    """The repository's OpenAI stub, also keeping the headers of each request it was sent."""

    def __init__(self, replies: list[dict]):
        self.headers: list[dict[str, str]] = []
        super().__init__(replies)

    def _handler_class(self):
        stub, base = self, super()._handler_class()

        class Handler(base):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                super().do_POST()

        return Handler


def test_a_model_call_is_an_http_client_span_and_carries_the_trace(traced_client, spans):
    """The OpenAI SDK sends with httpx2 (not httpx): its client span, in the request's trace, and
    the `traceparent` the provider receives names that span."""
    replies = [
        {"tool_calls": [{"name": "search_docs", "arguments": {"query": "smaller images"}}]},
        {"content": "Use a slim base and a multi-stage build [1]."},
    ]
    with HeaderStub(replies) as stub:
        client = traced_client(
            OPENAI_API_KEY="test-key",
            OPENAI_BASE_URL=stub.base_url,
            OPENAI_MAX_RETRIES=0,
            SEARCH_BACKEND="local",
        )
        headers = {"traceparent": TRACEPARENT}
        answer = client.post("/v1/research", json={"query": QUESTION}, headers=headers)
    assert answer.status_code == 200, answer.text
    finished = spans.get_finished_spans()
    url = lambda span: span.attributes.get("url.full", span.attributes.get("http.url", ""))  # noqa: E731
    calls = [s for s in finished if s.kind == SpanKind.CLIENT and url(s).startswith(stub.base_url)]
    assert len(calls) == 2, [(s.name, dict(s.attributes)) for s in finished]
    assert {format(s.context.trace_id, "032x") for s in calls} == {TRACE_ID}
    (server,) = [s for s in finished if s.kind == SpanKind.SERVER]
    assert all(s.parent.span_id == server.context.span_id for s in calls)
    sent = [h.get("traceparent") for h in stub.headers]
    assert sent == [f"00-{TRACE_ID}-{format(s.context.span_id, '016x')}-01" for s in calls]


# --- The standard variables, a real exporter, a collector on loopback -----------------------------


def ask_in_a_trace(agent) -> httpx.Response:
    """QUESTION to a started agent, from a caller whose trace is TRACEPARENT."""
    return httpx.post(
        f"{agent.url}/v1/research",
        json={"query": QUESTION},
        headers={"traceparent": TRACEPARENT},
        timeout=60,
    )


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_otel_variables_export_over_either_protocol(
    start_agent, collector, grpc_collector, protocol
):
    target = grpc_collector if protocol == "grpc" else collector
    agent = start_agent(
        OTEL_EXPORTER_OTLP_ENDPOINT=target.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        # Empty, as research-agent/docker-compose.yml passes them when unset: the defaults apply.
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="",
        OTEL_SERVICE_NAME="research-agent-under-test",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    assert ask_in_a_trace(agent).status_code == 200
    names = lambda: {s.name for s in target.spans()}  # noqa: E731
    # The server span ends after the answer is sent: it may come in a later batch than the agent's.
    expected = {
        "POST /v1/research",
        "invoke_agent research-agent",
        "chat offline-research-model",
        "execute_tool search_docs",
    }
    wait_for(lambda: expected <= names(), timeout=20, what=f"the spans {sorted(expected)}")
    assert {s.trace_id.hex() for s in target.spans()} == {TRACE_ID}
    assert target.service_names() == {"research-agent-under-test"}
    other = collector if protocol == "grpc" else grpc_collector
    assert other.requests == []


def test_the_sampler_is_read_from_the_environment(start_agent, collector):
    agent = start_agent(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_TRACES_SAMPLER="always_off",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    assert (
        httpx.post(f"{agent.url}/v1/research", json={"query": QUESTION}, timeout=60).status_code
        == 200
    )
    agent.stop()  # flushes what is batched before it exits
    assert collector.requests == []


def test_nothing_is_exported_without_an_endpoint(start_agent, collector):
    """No OTEL_EXPORTER_OTLP_ENDPOINT: even a caller's traceparent and every other OTEL_* variable
    pointing at the collector send nothing."""
    agent = start_agent(OTEL_SERVICE_NAME="nobody", OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    assert ask_in_a_trace(agent).status_code == 200
    agent.stop()
    assert collector.requests == []


def test_a_backend_that_stops_answering_is_counted_and_logged_once(start_agent):
    """A collector that accepts connections and never answers, as a paused container does: each
    lost span is counted in /metrics, and the outage is one line when it starts and one when the
    backend takes spans again, instead of the SDK's line per failed batch (and per retry)."""
    paused = socket.create_server(("127.0.0.1", 0), backlog=128)  # never accept()s: no answer
    port = paused.getsockname()[1]
    agent = start_agent(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",  # seconds, per export
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    client = httpx.Client(base_url=agent.url, timeout=60)
    lost = lambda: metric(client, "trace_spans_dropped_total", reason="export_failed")  # noqa: E731
    for i in range(3):  # five spans each, in more than one batch
        assert client.post("/v1/research", json={"query": f"{QUESTION} {i}"}).status_code == 200
    wait_for(lambda: lost() >= 15, timeout=60, what="15 spans counted as lost")
    assert metric(client, "trace_spans_exported_total") == 0

    paused.close()
    collector = OtlpCollector("http/protobuf")
    collector.port = port  # the backend answers again, where it was
    with collector:
        assert client.post("/v1/research", json={"query": QUESTION}).status_code == 200
        sent = lambda: metric(client, "trace_spans_exported_total")  # noqa: E731
        wait_for(lambda: sent() >= 5, timeout=20, what="5 spans exported")
    total = lost()
    client.close()
    agent.stop()
    lines = [json.loads(line) for line in agent.log_text().splitlines() if line.startswith("{")]
    sdk = [line for line in lines if line["logger"].startswith("opentelemetry")]
    assert sdk == []
    (outage,) = [line for line in lines if line["message"].startswith("traces are being dropped")]
    assert outage["level"] == "WARNING" and outage["reason"]
    (back,) = [line for line in lines if line["message"].startswith("the trace backend takes")]
    assert back["spans_dropped"] == total >= 15


def test_spans_a_full_queue_drops_are_counted_and_logged_once(caplog, monkeypatch):
    """The batch processor keeps OTEL_BSP_MAX_QUEUE_SIZE spans: past that, the SDK drops each new
    one with a warning of its own. Counted instead, and one line."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from prometheus_client import REGISTRY

    from research_agent.tracing.otel import counted_batches

    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    release = threading.Event()

    class Stuck:  # an export that hangs until released, then succeeds
        def export(self, spans):
            release.wait(30)
            return SpanExportResult.SUCCESS

        def shutdown(self):
            pass

        def force_flush(self, timeout_millis=30000):
            return True

    def dropped() -> float:
        sample = REGISTRY.get_sample_value("trace_spans_dropped_total", {"reason": "queue_full"})
        return sample or 0.0

    provider = TracerProvider()
    provider.add_span_processor(counted_batches(Stuck()))
    before = dropped()
    with caplog.at_level(logging.INFO):
        for _ in range(20):
            provider.get_tracer("test").start_span("step").end()
        release.set()
        provider.force_flush()
        provider.get_tracer("test").start_span("after").end()
        provider.shutdown()
    assert dropped() - before >= 20 - 4 - 1  # the queue, and the batch being exported
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if m.startswith("Queue full")], messages
    assert len([m for m in messages if m.startswith("traces are being dropped")]) == 1, messages
    assert len([m for m in messages if m.startswith("the trace backend takes")]) == 1, messages


PROBE = """
import json, sys
from fastapi.testclient import TestClient
from opentelemetry import trace
import main
with TestClient(main.app) as client:
    assert client.post("/v1/research", json={"query": "docker"}).status_code == 200
print(json.dumps({
    "provider": type(trace.get_tracer_provider()).__name__,
    "loaded": sorted(m for m in sys.modules if m.startswith((
        "opentelemetry.exporter", "opentelemetry.instrumentation", "grpc"))),
    "middleware": [m.cls.__name__ for m in main.app.user_middleware],
}))
"""


def test_without_an_endpoint_no_provider_exporter_or_instrumentation_is_loaded():
    """(langsmith, which LangChain brings, imports opentelemetry.sdk itself when it is installed;
    it installs no provider.)"""
    clean = {k: v for k, v in os.environ.items() if k not in variables()}
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=AGENT_DIR,
        env={**clean, "LOG_LEVEL": "WARNING", "OFFLINE_TOKEN_DELAY_MS": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["provider"] == "ProxyTracerProvider"  # the API's no-op default
    assert found["loaded"] == []
    assert not any("OpenTelemetry" in m for m in found["middleware"])
