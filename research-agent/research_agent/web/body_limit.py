"""A body limit for any ASGI service of the course: 413 for a body over `max_bytes`, from
Content-Length or while a chunked body is read, and 414 for a URL over MAX_URL_BYTES. Pure ASGI (not
BaseHTTPMiddleware), so streams pass through untouched; no side effects on import, so lesson 04's
API uses it as the research agent does (research_agent/web/middleware.py).
"""

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_shape import error_body
from .header_numbers import InvalidHeader, header_number

# No route needs a longer URL; a 64 KB one, a thousand times a second, was 60 MB/s of access log.
MAX_URL_BYTES = 2048


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`: from Content-Length, or while a chunked body is read; and
    414 for a URL (path and query) over MAX_URL_BYTES, before any route sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url_bytes = len(scope.get("raw_path") or scope["path"]) + len(
            scope.get("query_string", b"")
        )
        if url_bytes > MAX_URL_BYTES:
            response = JSONResponse(
                error_body("uri_too_long", f"the URL is over {MAX_URL_BYTES} bytes"), 414
            )
            await response(scope, receive, send)
            return
        try:  # one reading of a number in a header for every service (header_numbers.py)
            length = header_number(Headers(scope=scope).get("content-length"), "Content-Length")
        except InvalidHeader as exc:
            response = JSONResponse(error_body(exc.error_type, exc.message), exc.status)
            await response(scope, receive, send)
            return
        if length is not None and length > self.max_bytes:
            response = JSONResponse(error_body("payload_too_large", self._message), 413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self._message)  # the error handlers shape it
            return message

        await self.app(scope, limited_receive, send)

    @property
    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"
