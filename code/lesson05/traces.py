"""Lesson 05 in a trace (docs/09-traces.md, "Going further"): a run is one trace. POST /v1/runs
is its server span (FastAPI's own: TELEMETRY); `run` covers launching every variation, `launch
variation {i}` each one's container (or warm worker). The job the worker gets carries the launch
span's `traceparent` (research_agent/worker/job.py's trace_env, added to the job's variables here),
so each worker's `variation {i}` span and its agent's spans hang under it, N variations side by
side.

Set up from the same OTEL_* variables as the research agent (research_agent/tracing/otel.py):
without OTEL_EXPORTER_OTLP_ENDPOINT nothing is loaded, these spans are the API's no-ops, and a job
carries no trace variable. Workers export to WORKER_OTEL_EXPORTER_OTLP_ENDPOINT when it is set,
else to the API's own endpoint: an API on the host sends to the viewer's loopback port, which a
worker container cannot reach (its 127.0.0.1 is its own). Nor should it: a worker is hostile
here, and the viewer reads and deletes traces for whoever asks. So the workers get lesson 09's
write-only ingest, on their own network, instead. `TRACES=1 make lesson-05` sets both
(scripts/lesson-05.sh).
"""

from opentelemetry import trace

from research_agent import TracingSettings, trace_env

SERVICE_NAME = "lesson05-variations"


def untraced(scope: dict) -> bool:
    """The probes: their requests make no span."""
    return scope.get("path", "").strip("/") in ("health", "ready")


# FastAPI(telemetry=TELEMETRY): FastAPI's own server span per request, once a provider is set up
# (as research_agent/tracing/otel.py's FASTAPI_TELEMETRY, without importing the agent's LangChain).
TELEMETRY = {"operation_spans": False, "metrics": False, "logs": False, "exclude": untraced}


def trace_runs() -> None:
    """With an endpoint: a provider (research_agent/tracing/otel.py). No Redis or HTTPX
    instrumentation: the reaper's commands, every 0.25 s, would bury the runs."""
    settings = TracingSettings()
    if settings.tracing_enabled:
        from research_agent import configure_tracing

        configure_tracing(settings, service_name=SERVICE_NAME)


def tracer() -> trace.Tracer:
    return trace.get_tracer("lesson05-variations")


def trace_launches(orchestrator):
    """A span around the launch of the run and of each variation, wrapped around the lesson's
    Orchestrator where the app is composed (its lifespan): `start_all` and `start_one` of this
    one instance. The spans end once the workers are started; their own spans go on under them."""
    start_all, start_one = orchestrator.start_all, orchestrator.start_one

    async def run(run_id: str, query: str, variations: list[dict]) -> None:
        attributes = {"lesson05.run_id": run_id, "lesson05.variations": len(variations)}
        with tracer().start_as_current_span("run", attributes=attributes):
            await start_all(run_id, query, variations)

    async def launch(run_id: str, query: str, v: dict, count: int) -> None:
        attributes = {"lesson05.run_id": run_id, "lesson05.variation": v["index"]}
        name = f"launch variation {v['index']}"
        with tracer().start_as_current_span(name, attributes=attributes):
            await start_one(run_id, query, v, count)

    def job(*args) -> tuple:
        """The job, whose variables now carry the launch span's context and where to export
        (research_agent/worker/job.py's trace_env): the worker's spans join the run's trace."""
        job, agent = make_job(*args)
        endpoint = orchestrator.settings.WORKER_OTEL_EXPORTER_OTLP_ENDPOINT
        return job, {**agent, **trace_env(endpoint or None)}

    # start_all calls self.start_one: found on the instance first, so each launch is in its span.
    make_job = orchestrator.job
    orchestrator.start_all, orchestrator.start_one, orchestrator.job = run, launch, job
    return orchestrator
