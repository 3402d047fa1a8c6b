"""Lesson 01, step 2: an id for every request, and log lines that are JSON and carry it.

`RequestContextMiddleware` gives each request an id (the caller's X-Request-ID when it looks sane,
else a new one), keeps it for every log line of the request and sends it back, and logs the request
once, at its last byte. `configure_logging` writes every log line as one JSON object.
"""

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

logger = logging.getLogger("agent_api")

# The id of the request being served: a ContextVar, so each request (each task) sees its own.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
# A caller's id is kept only if it is short and plain: no newlines or megabytes in the logs.
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
            **getattr(record, "fields", {}),  # logger.info("...", extra={"fields": {...}})
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Every log line as one JSON object on stdout (uvicorn's too: run it with log_config=None)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


class RequestContextMiddleware:
    """Plain ASGI: it sees each message go by, so a stream is neither buffered nor copied. At the
    last byte it logs the request and hands its numbers to `on_done` (step 3: the metrics)."""

    def __init__(self, app, on_done: Callable[[str, str, int, float], None] | None = None):
        self.app, self.on_done = app, on_done

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if SAFE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        request_id_var.set(request_id)
        started, status = time.perf_counter(), 500  # 500 unless a response starts

        async def send_with_request_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                message["headers"] = [*headers, (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:  # after the last byte: a stream is logged when it ends, not when it starts
            route = getattr(scope.get("route"), "path", "unmatched")  # the template: /v1/invoke
            seconds = time.perf_counter() - started
            fields = {"method": scope["method"], "route": route, "status": status}
            fields["duration_ms"] = round(seconds * 1000, 1)
            logger.info("request", extra={"fields": fields})
            if self.on_done is not None:
                self.on_done(scope["method"], route, status, seconds)
