"""Request id, body size limit, access log, metrics and last-resort 500 for every HTTP request.

A pure ASGI middleware (not BaseHTTPMiddleware) so streaming responses pass through untouched.
"""

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .telemetry import LATENCY, REQUESTS, request_id_var

logger = logging.getLogger(__name__)

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_body(error_type: str, message: str, details: list | None = None) -> dict:
    error = {"type": error_type, "message": message, "request_id": request_id_var.get()}
    if details is not None:
        error["details"] = details
    return {"error": error}


class PayloadTooLargeError(HTTPException):
    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=f"request body is larger than {limit} bytes")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        incoming = headers.get("x-request-id", "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started, status, response_started = time.perf_counter(), 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started, status = True, message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        received = 0

        async def limited_receive() -> Message:
            # Also catches bodies sent without Content-Length (chunked).
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise PayloadTooLargeError(self.max_body_bytes)
            return message

        try:
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                await self._send_error(
                    scope,
                    receive,
                    send_with_id,
                    413,
                    "payload_too_large",
                    f"request body is larger than {self.max_body_bytes} bytes",
                )
            else:
                await self.app(scope, limited_receive, send_with_id)
        except Exception:
            # Anything the exception handlers did not turn into a response: log the traceback, send none.
            logger.exception("unhandled error")
            if not response_started:
                await self._send_error(
                    scope, receive, send_with_id, 500, "internal_error", "Internal server error"
                )
        finally:
            route = scope.get("route")
            label = (
                getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            )
            elapsed = time.perf_counter() - started
            REQUESTS.labels(scope["method"], label, str(status)).inc()
            LATENCY.labels(scope["method"], label).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": label,
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 1),
                },
            )
            request_id_var.reset(token)

    @staticmethod
    async def _send_error(
        scope: Scope, receive: Receive, send: Send, status: int, error_type: str, message: str
    ) -> None:
        await JSONResponse(error_body(error_type, message), status_code=status)(
            scope, receive, send
        )
