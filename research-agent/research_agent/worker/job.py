"""One variation as a batch job: the contract between the worker (research_agent/worker/worker.py)
and lesson 05's orchestrator (code/lesson05/variations_api.py), defined here only. Both sides
import it:
the job's environment variables, the Redis keys a variation writes, the answer styles and the exit
codes.

It imports no LangChain, so the orchestrator can use it without loading the agent.
"""

from enum import IntEnum
from typing import Literal

from opentelemetry import propagate, trace
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..settings import Settings, TracingSettings, variables

# How an answer is shaped, so that variations differ visibly: appended to a real model's system
# prompt; the offline model follows the key itself.
ANSWER_STYLES = {
    "bullets": "Answer as a short bulleted list, one cited point per line.",
    "brief": "Answer in one or two sentences.",
    "detailed": "Answer in a few paragraphs, one per source, naming each source.",
}
AnswerStyle = Literal[tuple(ANSWER_STYLES)]  # the keys above, checked by pydantic


def events_key(run_id: str) -> str:
    """The run's Redis Stream: every event of every variation, each naming its variation."""
    return f"run:{run_id}:events"


def variation_key(run_id: str, index: int) -> str:
    """One variation's hash: the orchestrator's status fields, the `result` or `error`."""
    return f"run:{run_id}:v:{index}"


def worker_events_key(run_id: str, index: int) -> str:
    """The one key a worker may write (XADD): its own stream. The orchestrator copies each entry
    into the run's stream, checked and tagged with this variation, so no worker can write as
    another variation or touch a key of another run (each worker's Redis user allows only this)."""
    return f"run:{run_id}:v:{index}:events"


# The events a worker may send; the orchestrator drops any other name (run_done, variation_done...
# are the orchestrator's own).
WORKER_EVENTS = ("worker_ready", "token", "tool", "truncated", "final", "error", "worker_stats")


def warm_queue_key(deployment: str, worker: str) -> str:
    """A warm worker's Redis list: it blocks on it (BLPOP) for its one job, sent as `to_env()`'s
    JSON. One list per worker, so a job goes to the worker chosen and to no other."""
    return f"warm:{deployment}:{worker}"


def warm_alive_key(deployment: str) -> str:
    """Kept alive by the orchestrator (a short TTL renewed on every reaper pass): a warm worker
    that finds it gone while waiting knows no orchestrator will send it a job, and leaves."""
    return f"warm:{deployment}:alive"


def warm_ready_key(queue: str) -> str:
    """Set by a warm worker while it waits with its imports done: how a benchmark (or a curious
    reader, `redis-cli --scan --pattern 'warm:*:ready'`) tells a ready worker from one still
    importing."""
    return f"{queue}:ready"


class Job(BaseModel):
    """What the orchestrator asks of one worker. The field names are the environment variables:
    `to_env()` writes them for the container, WorkerSettings reads them back."""

    model_config = ConfigDict(extra="forbid")

    RUN_ID: str = Field(pattern=r"^[0-9a-f]{8,32}$")
    VARIATION: int = Field(ge=0, le=63)
    QUERY: str = Field(min_length=1, max_length=2000)
    ANSWER_STYLE: AnswerStyle = "bullets"
    # With this worker's own Redis user in it (user:password@), allowed only its stream.
    REDIS_URL: str = "redis://redis:6379/0"
    STREAM_MAXLEN: int = Field(5000, ge=10)  # the run's stream never holds more entries than this
    TOKEN_BUDGET: int = Field(1000, ge=0)  # token events this variation may add to the stream

    @property
    def stream_key(self) -> str:
        """Where this worker writes its events: its own stream (worker_events_key)."""
        return worker_events_key(self.RUN_ID, self.VARIATION)

    def to_env(self, secrets: bool = True, **extra) -> dict[str, str]:
        """The job plus `extra`, the agent's settings this variation changes (TEMPERATURE,
        MODEL_NAME...), as a container's environment: every value a string, a None left out.
        `secrets=False` leaves out OPENAI_API_KEY (agent_env, below, writes every worker's
        environment)."""
        return agent_env(secrets, **{**self.model_dump(), **extra})


# The run's trace context, which trace_env adds to a job's variables (the worker's TraceContext).
TRACE_VARIABLES = ("TRACEPARENT", "TRACESTATE")


def trace_env(otlp_endpoint: str | None = None) -> dict[str, str]:
    """Lesson 09: what a worker needs to join the current trace, added to its job's variables
    where the orchestrator launches it: TRACEPARENT (and TRACESTATE) of the span
    current now, and the OTEL_* settings of TracingSettings that this process has set (the
    endpoint, the protocol, content capture; never OTEL_EXPORTER_OTLP_HEADERS, which may hold a
    backend's key). `otlp_endpoint`: where the worker exports instead, when this process's
    endpoint is one only it reaches (127.0.0.1 on the host is not the host from a container).
    Empty while tracing is off: no span is current, nothing is added, not even the endpoint."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    found = {"TRACEPARENT": carrier.get("traceparent"), "TRACESTATE": carrier.get("tracestate")}
    exporter = TracingSettings().model_dump(exclude_defaults=True)
    if otlp_endpoint:  # the traces-only endpoint would win over it: the worker gets this one only
        exporter.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
        exporter["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_endpoint
    return {name: value for name, value in {**found, **exporter}.items() if value is not None}


def agent_env(secrets: bool = True, **values) -> dict[str, str]:
    """Settings of the agent (and a job's fields) as a container's environment: every value a
    string, a None left out (the default holds). `secrets=False` leaves out the secret ones
    (OPENAI_API_KEY): a warm worker's job travels through Redis, and a warm worker got its secrets
    in its environment when it started. The one place a worker's environment is written."""
    unknown = set(values) - {*variables(Settings), *Job.model_fields, *TRACE_VARIABLES}
    if unknown:
        raise ValueError(f"not settings of the agent: {sorted(unknown)}")
    return {
        name: value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        for name, value in values.items()
        if value is not None and (secrets or not isinstance(value, SecretStr))
    }


class ExitCode(IntEnum):
    """The worker's last word, read by the orchestrator when its container stops."""

    ANSWERED = 0  # a `final` event was published
    FAILED = 1  # the research failed: an `error` event says why
    INVALID_JOB = 2  # bad settings: nothing was published
    NO_REDIS = 3  # Redis could not be reached
    IDLE = 4  # a warm worker that got no job within its idle time, and left


EXIT_REASONS = {
    ExitCode.FAILED: "the research failed (see its error event)",
    ExitCode.INVALID_JOB: "the worker rejected its job",
    ExitCode.NO_REDIS: "the worker could not reach Redis",
    ExitCode.IDLE: "the warm worker had left (idle too long) before its job arrived",
}
