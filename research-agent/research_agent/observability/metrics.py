"""JSON logs carrying the request id, and the Prometheus metrics.

Lesson 01 builds both by hand to show the mechanism. A service uses kept libraries:
python-json-logger formats the records, asgi-correlation-id's filter puts the request id on each
one, and prometheus-fastapi-instrumentator measures every request by route template.
"""

import logging
import sys

from asgi_correlation_id import CorrelationIdFilter
from asgi_correlation_id.context import correlation_id
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import ToolMessage
from prometheus_client import Counter, Gauge, disable_created_metrics
from prometheus_fastapi_instrumentator import metrics
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

disable_created_metrics()  # drop the *_created series: noise for this service


def request_id() -> str:
    """The id of the request being served ("-" outside a request)."""
    return correlation_id.get() or "-"


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (test runners swap it)."""

    _research_agent = True

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: str) -> None:
    """Send every log record, uvicorn's included, to stdout as JSON. Safe to call more than once.

    One object per line: time, level, logger, message, request_id and any `extra=` fields.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_research_agent", False)]:
        root.removeHandler(handler)
    handler = _StdoutHandler()
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    handler.setFormatter(
        JsonFormatter(
            "{levelname}{name}{message}{correlation_id}",
            style="{",
            timestamp="time",
            rename_fields={
                "levelname": "level",
                "name": "logger",
                "correlation_id": "request_id",
                "exc_info": "exception",
            },
            reserved_attrs=[*RESERVED_ATTRS, "taskName", "color_message"],
        )
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # AccessLogMiddleware logs each request at its last byte, with its latency and route template;
    # uvicorn's access line comes at the first byte and would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "primp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# HTTP metrics, recorded by prometheus-fastapi-instrumentator's middleware
# (research_agent/web/middleware.py). Created once per process: every app built in the process
# (tests build many) shares them. `handler` is the route template (/v1/research), or "none" for a
# path no route matches.
HTTP_METRICS = [
    metrics.requests(),  # http_requests_total{handler,method,status}
    # Streams are timed to their last byte: the middleware stops the clock after the body is sent.
    metrics.latency(
        should_include_status=False,
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    ),  # http_request_duration_seconds{handler,method}
]

TOKENS = Counter("agent_tokens_total", "Model tokens used", ["model", "kind"])
TOOL_CALLS = Counter("agent_tool_calls_total", "Tool calls made by the agent", ["tool", "status"])
CACHE_HITS = Counter("research_cache_hits_total", "Research answers served from the cache")
CACHE_MISSES = Counter("research_cache_misses_total", "Research requests not found in the cache")
CACHE_ERRORS = Counter(
    "research_cache_errors_total", "Cache operations that failed (cache bypassed)"
)
CACHE_CALLS = Counter(
    "research_cache_redis_calls_total", "Commands sent to Redis (skipped ones are not counted)"
)
CACHE_SKIPPED = Counter(
    "research_cache_skipped_total", "Cache operations skipped because the circuit breaker is open"
)
CACHE_BREAKER_OPEN = Gauge(
    "research_cache_breaker_open", "1 while the cache's circuit breaker skips Redis, else 0"
)
STREAMS_OPEN = Gauge("research_streams_open", "Research streams being sent right now")
SHUTDOWN_CUTS = Counter(
    "research_shutdown_cuts_total",
    "Requests still running when the shutdown grace ran out, ended with a shutting_down error",
    ["handler"],
)
REQUESTS_REJECTED = Counter(
    "research_requests_rejected_total",
    "Requests refused before any work: unauthorized (401), rate_limited, too_many_streams, "
    "budget_exhausted (429), limits_unavailable (503). Never labelled by caller or key.",
    ["reason"],
)
LIMITS_DEGRADED = Gauge(
    "research_limits_degraded",
    "1 while Redis cannot count and LIMITS_FAIL_MODE applies, else 0",
)


class ToolCallMetrics(AgentMiddleware):
    """Counts the search tool's calls in `agent_tool_calls_total`, by how they ended. It wraps the
    agent's SearchToolMiddleware (research_agent/agent.py), which turns every failure into a
    ToolMessage with status "error"; other tools (run_python) are not counted."""

    def __init__(self, tool_name: str):
        super().__init__()
        self.tool_name = tool_name

    async def awrap_tool_call(self, request, handler):
        result = await handler(request)
        name = request.tool_call["name"]
        if name == self.tool_name and isinstance(result, ToolMessage):
            TOOL_CALLS.labels(name, "error" if result.status == "error" else "success").inc()
        return result
