"""JSON logs carrying the request id, and the Prometheus metrics."""

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

from prometheus_client import Counter, Histogram, disable_created_metrics

disable_created_metrics()  # drop the *_created series: noise for this service

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

# Attributes every LogRecord has; anything else was passed with `extra=` and is logged as a field.
_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        entry.update(
            {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and k not in entry}
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


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
    """Send every log record, uvicorn's included, to stdout as JSON. Safe to call more than once."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_research_agent", False)]:
        root.removeHandler(handler)
    handler = _StdoutHandler()
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our middleware logs each request with its id and latency; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "primp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Route label: the route template (/v1/research), never the raw path, so the label set stays bounded.
REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "HTTP request latency (streams: until the last event)",
    ["method", "route"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = Counter("agent_tokens_total", "Model tokens used", ["model", "kind"])
TOOL_CALLS = Counter("agent_tool_calls_total", "Tool calls made by the agent", ["tool", "status"])
CACHE_HITS = Counter("research_cache_hits_total", "Research answers served from the cache")
CACHE_MISSES = Counter("research_cache_misses_total", "Research requests not found in the cache")
CACHE_ERRORS = Counter(
    "research_cache_errors_total", "Cache operations that failed (cache bypassed)"
)
