"""Lesson 01, step 2: the context of each request, and the JSON log lines that carry it.

`RequestContextMiddleware` gives every request an id (the caller's `X-Request-ID` when it looks
sane), refuses a body over the limit before reading it, and counts and logs every request under its
route template. `JsonFormatter` writes each log line as one JSON object with that id.
"""

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from fastapi import HTTPException
from prometheus_client import Counter, Histogram
from starlette.responses import Response

logger = logging.getLogger("agent_api")

# The id of the request being served: every log line and every error body carries it.
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class PayloadTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than {max_bytes} bytes")


# A caller's id is kept only if it is short and plain: no newlines or megabytes in the logs.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestContextMiddleware:
    """Plain ASGI: it watches each message go by, so a stream is neither buffered nor copied."""

    def __init__(
        self,
        app,
        *,
        max_body_bytes: int,
        requests: Counter,
        latency: Histogram,
        internal_error: Callable[[], Response],
    ):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.requests, self.latency, self.internal_error = requests, latency, internal_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex
        request_id_var.set(request_id)
        declared_length = headers.get(b"content-length", b"")
        received = 0
        started = time.perf_counter()
        status: int | None = None  # set when the app starts its response

        # [start:receive-send]
        async def receive_with_limit():
            # Refuse before reading: by the declared length, else by counting (a chunked body).
            nonlocal received
            if declared_length.isdigit() and int(declared_length) > self.max_body_bytes:
                raise PayloadTooLarge(self.max_body_bytes)
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise PayloadTooLarge(self.max_body_bytes)
            return message

        async def send_with_request_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)
            # [end:receive-send]

        try:
            await self.app(scope, receive_with_limit, send_with_request_id)
        except Exception:
            # Anything no handler caught: log the traceback, tell the client nothing internal.
            logger.exception("Unhandled error")
            if status is not None:  # the response has started: all we can do is drop the connection
                raise
            await self.internal_error()(scope, receive, send_with_request_id)
        finally:
            # The route template (/v1/invoke), never the raw path: unknown paths share one series.
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            status = status or 500
            self.requests.labels(scope["method"], route, str(status)).inc()
            self.latency.labels(scope["method"], route).observe(elapsed)
            fields = {"method": scope["method"], "route": route, "status": status}
            fields["duration_ms"] = round(elapsed * 1000, 2)
            logger.info("request", extra={"fields": fields})
