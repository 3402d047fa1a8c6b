"""One variation of a research question, run as a batch job: ``python -m research_agent.worker``.

The same image as the API, another command. The job arrives as environment variables, read by
WorkerSettings like every other setting (data, never a shell string), so a query full of quotes,
`$(...)` or newlines is just text. The worker streams the agent's events into the run's Redis
Stream, records its answer, and exits with a code the orchestrator reads. The job, the keys and
the exit codes are the contract in research_agent/worker/job.py, which the orchestrator imports too.

A warm worker (``python -m research_agent.worker --warm``) is started before its job: it does its
imports, then blocks on its own Redis list (WARM_QUEUE) for one job, the same variables as JSON,
runs it and exits; with no job within WARM_IDLE_SECONDS, or once the orchestrator's WARM_ALIVE key
is gone (no orchestrator left to send one), it exits by itself.

Each worker reaches Redis as a user of its own (in REDIS_URL): a warm one may read only its list,
a variation may only XADD to its own stream (research_agent/worker/job.py), whatever code runs in
the container.

With tracing on in the orchestrator, the job carries TRACEPARENT and the OTEL_* exporter settings
(research_agent/worker/job.py's trace_env): the worker's `variation {i}` span, and the agent's spans
under it, join the run's trace (lesson 09). Without them, no tracing is set up here.
"""

import time

STARTED = time.time()  # before the heavy imports, so `worker_ready` can say what they cost

import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import redis.asyncio as redis  # noqa: E402
from opentelemetry import propagate  # noqa: E402
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai  # noqa: E402
from opentelemetry.trace import StatusCode  # noqa: E402
from pydantic import Field, ValidationError  # noqa: E402
from pydantic_settings import BaseSettings  # noqa: E402
from redis.asyncio.retry import Retry  # noqa: E402
from redis.backoff import ExponentialBackoff  # noqa: E402

from ..agent import SYSTEM_PROMPT, ResearchAgent  # noqa: E402
from ..settings import ENV, Composed, Settings  # noqa: E402
from ..tools import build_agent as build_research_agent  # noqa: E402
from ..tracing.genai_spans import instrument_langchain  # noqa: E402
from ..tracing.otel import configure_tracing, flush_tracing, tracer  # noqa: E402
from ..web.error_shape import INTERNAL_ERROR_MESSAGE  # noqa: E402
from ..web.errors import AppError  # noqa: E402
from .job import ANSWER_STYLES, TRACE_VARIABLES, ExitCode, Job, warm_ready_key  # noqa: E402
from .styles import StyledOfflineModel  # noqa: E402

logger = logging.getLogger("research_agent.worker")


class JobSettings(Job, BaseSettings):
    """The job, read from the environment."""

    model_config = ENV


class WorkerSettings(Composed):
    """The job and the research agent's settings, each read from the environment. A variation also
    sets TEMPERATURE, MODEL_NAME and SEARCH_MAX_RESULTS, which the agent's settings read: a name
    given (a warm worker's job) goes to the job if it reads it (REDIS_URL: the worker's own Redis
    user), else to the agent's."""

    job: JobSettings = Field(default_factory=JobSettings)
    agent: Settings = Field(default_factory=Settings)


class Publisher:
    """XADD every event to this variation's own stream, capped at STREAM_MAXLEN: the orchestrator
    copies each into the run's stream and keeps the `final` answer or `error` for its GET route."""

    def __init__(self, client: redis.Redis, settings: WorkerSettings):
        self.client, self.settings = client, settings

    async def send(self, event: str, data: dict) -> None:
        job = self.settings.job
        data = {"variation": job.VARIATION, **data}
        fields = {"event": event, "data": json.dumps(data)}
        await self.client.xadd(job.stream_key, fields, maxlen=job.STREAM_MAXLEN)


def connect(url: str, **options) -> redis.Redis:
    """A client that rides out a Redis restart (about eight seconds of retries, including the
    moments its user does not exist yet: redis-py's AuthenticationError is a ConnectionError)."""
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), 10)
    return redis.from_url(url, socket_connect_timeout=5, retry=retry, **options)


def build_agent(settings: WorkerSettings) -> ResearchAgent:
    agent, style = settings.agent, settings.job.ANSWER_STYLE
    model = None  # a real model: build_model reads MODEL_NAME and TEMPERATURE from the settings
    if agent.offline:
        model = StyledOfflineModel(
            token_delay_ms=agent.OFFLINE_TOKEN_DELAY_MS, style=style, temperature=agent.TEMPERATURE
        )
    prompt = f"{SYSTEM_PROMPT}\n{ANSWER_STYLES[style]}"
    return build_research_agent(agent, model=model, system_prompt=prompt)


def peak_memory_mb() -> dict:
    """The process's peak resident memory and, inside a container, its cgroup's peak usage."""
    found = {"process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    for path in ("/sys/fs/cgroup/memory/memory.max_usage_in_bytes", "/sys/fs/cgroup/memory.peak"):
        try:
            found["cgroup_peak_mb"] = round(int(Path(path).read_text()) / 2**20, 1)
            break
        except (OSError, ValueError):
            continue
    return found


class TraceContext(BaseSettings):
    """The run's trace (lesson 09): the W3C context of the span that launched this variation,
    which the orchestrator adds to the job's variables while tracing is on
    (research_agent/worker/job.py's trace_env). Checked with the job: a malformed one is an invalid
    job."""

    TRACEPARENT: str | None = Field(None, pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    TRACESTATE: str | None = Field(None, max_length=512)


@contextmanager
def job_span(settings: WorkerSettings, started: float, **attributes):
    """The variation's span, `variation {i}`, current while it runs: its parent is the
    TRACEPARENT (and TRACESTATE) its job carries (TraceContext), so every variation of a run sits
    in the run's trace, side by side. `started`: a Unix time (its start-up counts). While tracing
    is off, the API's no-op span."""
    job, agent = settings.job, settings.agent
    context = TraceContext()
    carrier = {"traceparent": context.TRACEPARENT or "", "tracestate": context.TRACESTATE or ""}
    attributes = {f"lesson05.{name}": value for name, value in attributes.items()}
    with tracer("research-agent.worker").start_as_current_span(
        f"variation {job.VARIATION}",
        context=propagate.extract({k: v for k, v in carrier.items() if v}),
        start_time=int(started * 1e9),
        attributes={
            "lesson05.run_id": job.RUN_ID,
            "lesson05.variation": job.VARIATION,
            "lesson05.answer_style": job.ANSWER_STYLE,
            "lesson05.search_depth": agent.SEARCH_MAX_RESULTS,
            gen_ai.GEN_AI_REQUEST_MODEL: agent.model_label,
            gen_ai.GEN_AI_REQUEST_TEMPERATURE: agent.TEMPERATURE,
            **attributes,
        },
    ) as span:
        yield span


async def run(settings: WorkerSettings, warm: bool = False, assigned: float | None = None) -> int:
    """One variation. `assigned`: when a warm worker got its job, from which its start-up counts."""
    began = assigned or STARTED
    client = connect(settings.job.REDIS_URL)
    events = Publisher(client, settings)
    try:  # a busy engine's DNS or a restarting Redis: the client's retries, bounded
        await client.ping()
    except redis.RedisError as exc:  # the URL holds a password: never logged
        logger.error("cannot reach Redis: %s; giving up", exc)
        await client.aclose()
        return ExitCode.NO_REDIS
    imported = time.time()
    # The variation's span, from its start-up (a warm worker's: from its job) to its answer.
    with job_span(settings, began, worker="warm" if warm else "cold") as span:
        try:
            agent = await asyncio.to_thread(build_agent, settings)  # builds the search index
            await events.send(
                "worker_ready",
                {
                    "model": settings.agent.model_label,
                    "style": settings.job.ANSWER_STYLE,
                    "temperature": settings.agent.TEMPERATURE,
                    "search_depth": settings.agent.SEARCH_MAX_RESULTS,
                    "worker": "warm" if warm else "cold",
                    # A warm worker imported before its job came; start-up counts from the job.
                    "import_ms": round((imported - STARTED) * 1000) if not warm else 0,
                    "startup_ms": round((time.time() - began) * 1000),
                },
            )
            code = await stream_answer(agent, settings, events)
            span.set_attribute("lesson05.exit_code", int(code))
            if code != ExitCode.ANSWERED:
                span.set_status(StatusCode.ERROR, "the research failed")
            return code
        finally:
            await events.send(
                "worker_stats", {"run_ms": round((time.time() - began) * 1000), **peak_memory_mb()}
            )
            await client.aclose()


async def stream_answer(agent: ResearchAgent, settings: WorkerSettings, events: Publisher) -> int:
    job, tokens_sent, tokens_held_back = settings.job, 0, 0
    try:
        async for name, data in agent.stream(job.QUERY):
            if name == "token":
                if tokens_sent >= job.TOKEN_BUDGET:
                    tokens_held_back += 1  # counted and reported below: never dropped silently
                    continue
                tokens_sent += 1
            if name == "final":
                if tokens_held_back:
                    await events.send(
                        "truncated",
                        {
                            "tokens_not_streamed": tokens_held_back,
                            "reason": f"token budget of {job.TOKEN_BUDGET} events reached; "
                            "the final event carries the whole answer",
                        },
                    )
                data = {**data, "query": job.QUERY, "model": settings.agent.model_label}
            await events.send(name, data)
        return ExitCode.ANSWERED
    except Exception as exc:
        if isinstance(exc, AppError):
            error = {"type": exc.error_type, "message": exc.message}
        else:  # the traceback goes to the container's log, never into the stream
            logger.exception("research crashed")
            error = {"type": "internal_error", "message": INTERNAL_ERROR_MESSAGE}
        await events.send("error", {"error": error})
        return ExitCode.FAILED


async def wait_for_job() -> dict[str, str] | int:
    """A warm worker's wait: its job (the variables `Job.to_env()` writes), or an exit code."""
    queue, idle = os.environ["WARM_QUEUE"], float(os.environ.get("WARM_IDLE_SECONDS", "300"))
    alive = os.environ.get("WARM_ALIVE")  # the orchestrator's key: gone, no job will ever come
    step = min(idle, 5.0)
    # redis-py stops reading after 5 s by default: each read waits for a whole step.
    client = connect(os.environ["REDIS_URL"], socket_timeout=step + 5)
    give_up = time.monotonic() + idle
    try:
        await client.set(warm_ready_key(queue), round(time.time() - STARTED, 3), ex=int(idle) + 1)
        popped = None
        while popped is None and time.monotonic() < give_up:
            if alive and not await client.exists(alive):
                logger.info("warm worker: no orchestrator is running, leaving")
                break
            wait = max(0.1, min(step, give_up - time.monotonic()))
            popped = await client.blpop([queue], timeout=wait)
        await client.delete(warm_ready_key(queue))
    except redis.RedisError as exc:
        logger.error("warm worker: Redis: %s", exc)
        return ExitCode.NO_REDIS
    finally:
        await client.aclose()
    if popped is None:
        logger.info("warm worker: no job, leaving")
        return ExitCode.IDLE
    return json.loads(popped[1])


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warm = "--warm" in (sys.argv[1:] if argv is None else argv)
    job: dict[str, str] = {}
    if warm:
        found = asyncio.run(wait_for_job())
        if isinstance(found, int):
            return found
        job = found
    assigned = time.time() if warm else None
    # The exporter and the trace context read the environment: a warm job's go there first.
    traced = {n: v for n, v in job.items() if n.startswith("OTEL_") or n in TRACE_VARIABLES}
    os.environ.update(traced)
    job = {name: value for name, value in job.items() if name not in TRACE_VARIABLES}
    try:
        settings = WorkerSettings(**job)  # the job's values win over the environment's
        TraceContext()
    except ValidationError as exc:
        names = ", ".join(str(e["loc"][-1]) for e in exc.errors() if e["loc"])
        logger.error("invalid job, check these settings: %s", names)
        return ExitCode.INVALID_JOB
    tracing = settings.agent.tracing
    if configure_tracing(tracing, service_name="research-agent-worker"):
        instrument_langchain(tracing.OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)
    try:
        return asyncio.run(run(settings, warm, assigned))
    finally:
        flush_tracing()  # a worker process may end without atexit (os._exit)


if __name__ == "__main__":
    sys.exit(main())
