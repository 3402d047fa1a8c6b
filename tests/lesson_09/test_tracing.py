"""Traces of a research request (app/tracing.py): the span tree and its GenAI attributes, kept in
memory; the standard OTEL_* variables, against a local collector over both protocols; and nothing
at all when no endpoint is set."""

import json
import logging
import os
import subprocess
import sys
import time

import httpx
import pytest
from app.config import Settings
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.lessons import AGENT_DIR

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
    from app.tracing import GenAIHandler

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


# --- The standard variables, a real exporter, a collector on loopback -----------------------------


def wait_for(predicate, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


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
    answer = httpx.post(
        f"{agent.url}/v1/research",
        json={"query": QUESTION},
        headers={"traceparent": TRACEPARENT},
        timeout=60,
    )
    assert answer.status_code == 200
    names = lambda: {s.name for s in target.spans()}  # noqa: E731
    # The server span ends after the answer is sent: it may come in a later batch than the agent's.
    expected = {
        "POST /v1/research",
        "invoke_agent research-agent",
        "chat offline-research-model",
        "execute_tool search_docs",
    }
    assert wait_for(lambda: expected <= names()), names()
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
    answer = httpx.post(
        f"{agent.url}/v1/research",
        json={"query": QUESTION},
        headers={"traceparent": TRACEPARENT},
        timeout=60,
    )
    assert answer.status_code == 200
    agent.stop()
    assert collector.requests == []


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
    clean = {k: v for k, v in os.environ.items() if k not in Settings.model_fields}
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
