"""Lesson 05 in a trace (docs/09-traces.md, "Going further"): a run is one trace. POST /v1/runs
is its server span (FastAPI's own: TELEMETRY); `run` covers launching every variation, `launch
variation {i}` each one's container (or warm worker). The job the worker gets carries the launch
span's `traceparent` (app/job.py, Job.to_env), so each worker's `variation {i}` span and its
agent's spans hang under it, N variations side by side.

Set up from the same OTEL_* variables as the research agent (app/tracing.py): without
OTEL_EXPORTER_OTLP_ENDPOINT nothing is loaded, these spans are the API's no-ops, and a job
carries no trace variable. Workers export to WORKER_OTEL_EXPORTER_OTLP_ENDPOINT when it is set,
else to the API's own endpoint: an API on the host sends to the viewer's loopback port, which a
worker container cannot reach (its 127.0.0.1 is its own), so it gets the viewer's address on the
workers' network instead. `TRACES=1 make lesson-05` sets both (scripts/lesson-05.sh).
"""

from app.config import TracingSettings
from opentelemetry import trace

SERVICE_NAME = "lesson05-variations"


def untraced(scope: dict) -> bool:
    """The probes: their requests make no span."""
    return scope.get("path", "").strip("/") in ("health", "ready")


# FastAPI(telemetry=TELEMETRY): FastAPI's own server span per request, once a provider is set up
# (as app/tracing.py's FASTAPI_TELEMETRY, without importing the agent's LangChain).
TELEMETRY = {"operation_spans": False, "metrics": False, "logs": False, "exclude": untraced}


def trace_runs() -> None:
    """With an endpoint: a provider (app/tracing.py). No Redis or HTTPX instrumentation: the
    reaper's commands, every 0.25 s, would bury the runs."""
    settings = TracingSettings()
    if settings.tracing_enabled:
        from app.tracing import configure_tracing

        configure_tracing(settings, service_name=SERVICE_NAME)


def tracer() -> trace.Tracer:
    return trace.get_tracer("lesson05-variations")


class RunSpans:
    """Mixed into the Orchestrator: a span around the launch of the run and of each variation.
    The spans end once the workers are started; the workers' own spans go on under them."""

    async def start_all(self, run_id: str, query: str, variations: list[dict]) -> None:
        attributes = {"lesson05.run_id": run_id, "lesson05.variations": len(variations)}
        with tracer().start_as_current_span("run", attributes=attributes):
            await super().start_all(run_id, query, variations)

    async def start_one(self, run_id: str, query: str, v: dict, count: int) -> None:
        attributes = {"lesson05.run_id": run_id, "lesson05.variation": v["index"]}
        name = f"launch variation {v['index']}"
        with tracer().start_as_current_span(name, attributes=attributes):
            await super().start_one(run_id, query, v, count)
