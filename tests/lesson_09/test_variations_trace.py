"""Lesson 05's run as one trace (code/lesson05/traces.py, research_agent/worker/job.py's
Job.to_env): the API's `run` span, a `launch variation {i}` span per variation, and under each, that
variation's
worker (`variation {i}`, its agent, model and tool spans), exported by the worker itself to a local
OTLP collector. Workers are local processes with exactly a container's environment (lesson 05's
ProcessWorkers), one of them a warm worker that gets its job through Redis."""

import pytest

from research_agent.worker.job import Job, trace_env
from support.waiting import wait_for
from tests.support.variations import by_variation, read_events, start_run

# What a job's environment may carry for tracing, and nothing of it while tracing is off.
TRACE_VARIABLES = ("TRACEPARENT", "TRACESTATE")


def hex_id(value: bytes | int, digits: int) -> str:
    return value.hex() if isinstance(value, bytes) else format(value, f"0{digits}x")


@pytest.mark.parametrize("endpoint", ["the API's", "the workers' own"])
def test_a_run_is_one_trace_with_every_variations_worker_under_it(
    endpoint, spans, collector, serve, workers, monkeypatch
):
    # The API's spans in memory (the `spans` provider); the workers export to the collector, at
    # the API's endpoint or at WORKER_OTEL_EXPORTER_OTLP_ENDPOINT, which then replaces it.
    own = endpoint == "the workers' own"
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9" if own else collector.endpoint
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer collector-key")
    server = serve(
        WARM_WORKERS=1, WORKER_OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint if own else ""
    )
    pool = server.server.config.app.state.orchestrator.pool
    wait_for(lambda: pool.idle, timeout=60, what="a warm worker waiting")

    run_id = start_run(server.url)["run_id"]
    events = read_events(server.url, run_id)
    assert events[-1][1] == "run_done"
    kinds = {i: e["worker"] for i, e in by_variation(events, "container_started").items()}
    assert sorted(kinds.values()) == ["cold", "warm"]  # both ways a job reaches a worker
    assert set(by_variation(events, "final")) == {0, 1}

    api_spans = spans.get_finished_spans()
    (run,) = [s for s in api_spans if s.name == "run"]
    assert run.attributes["lesson05.run_id"] == run_id
    trace_id = hex_id(run.context.trace_id, 32)
    launches = {
        s.attributes["lesson05.variation"]: s for s in api_spans if s.name.startswith("launch")
    }
    assert set(launches) == {0, 1}
    assert all(s.parent.span_id == run.context.span_id for s in launches.values())

    def worker_spans():
        found = collector.spans()
        return found if sum(s.name.startswith("invoke_agent") for s in found) == 2 else None

    found = wait_for(worker_spans, timeout=30, what="both workers' agent spans at the collector")
    assert {hex_id(s.trace_id, 32) for s in found} == {trace_id}  # one trace: the run's
    assert collector.service_names() == {"research-agent-worker"}
    by_id = {hex_id(s.span_id, 16): s for s in found}
    for index, launch in launches.items():
        (variation,) = [s for s in found if s.name == f"variation {index}"]
        assert hex_id(variation.parent_span_id, 16) == hex_id(launch.context.span_id, 16)
        attributes = {a.key: a.value for a in variation.attributes}
        assert attributes["lesson05.worker"].string_value == kinds[index]
        assert attributes["lesson05.exit_code"].int_value == 0

        def under_variation(span, variation=variation):
            while span is not None:
                if span.span_id == variation.span_id:
                    return True
                span = by_id.get(hex_id(span.parent_span_id, 16))
            return False

        mine = [s for s in found if s is not variation and under_variation(s)]
        names = {s.name.split(" ")[0] for s in mine}
        assert {"invoke_agent", "chat", "execute_tool"} <= names, names
    # Every worker span hangs under one of the two variations.
    assert all(s.parent_span_id for s in found)
    # The exporter's headers (a backend's key) stay with the API: no worker was given them.
    for environment in workers.environments.values():
        assert "OTEL_EXPORTER_OTLP_HEADERS" not in environment


def test_a_job_carries_the_trace_only_while_tracing_is_on(serve, workers, monkeypatch):
    # Off: OTEL_* variables the API has, but no endpoint (OTEL_SDK_DISABLED wins over one).
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    server = serve(WORKER_OTEL_EXPORTER_OTLP_ENDPOINT="http://172.18.0.5:6006")
    run_id = start_run(server.url)["run_id"]
    assert read_events(server.url, run_id)[-1][1] == "run_done"
    assert len(workers.environments) == 2
    for environment in workers.environments.values():
        added = [n for n in environment if n.startswith("OTEL_") or n in TRACE_VARIABLES]
        assert not added, added

    # On: a job written while a span is current carries its context and the exporter's settings.
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.delenv("OTEL_SDK_DISABLED")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    job = Job(RUN_ID="0123456789abcdef", VARIATION=0, QUERY="q")
    with TracerProvider().get_tracer("test").start_as_current_span("launch") as span:
        env = job.to_env(False, **trace_env())
        empty = job.to_env(False, **trace_env(""))  # the setting's default: the API's endpoint
        own = job.to_env(False, **trace_env("http://172.18.0.5:6006"))
    context = span.get_span_context()
    assert (
        env["TRACEPARENT"]
        == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:9"
    assert env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == "http://127.0.0.1:9/v1/traces"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert empty == env
    # The workers' own endpoint replaces both: the traces-only one would win over it.
    assert own["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://172.18.0.5:6006"
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" not in own
    assert own["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc" and own["TRACEPARENT"] == env["TRACEPARENT"]
