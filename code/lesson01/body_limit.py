"""Lesson 01, the production version: a limit on the request body, enforced before it is read.

A body over `max_bytes` is a 413 in the error shape: at once when its Content-Length says so, and as
soon as a chunked body (which announces no length) passes the limit. The server never holds more of
it in memory. (FastAPI's own body limit answers in plain text, outside the error shape.)
"""

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .errors import error_body


class PayloadTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"The request body is larger than {max_bytes} bytes")


async def payload_too_large(request: Request, exc: PayloadTooLarge) -> JSONResponse:
    return JSONResponse(error_body("payload_too_large", str(exc.detail)), status_code=413)


class BodyLimitMiddleware:
    """Plain ASGI: it counts the body as the route reads it, piece by piece."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0

        async def receive_with_limit():
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise PayloadTooLarge(self.max_bytes)  # refused before a byte is read
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise PayloadTooLarge(self.max_bytes)
            return message

        await self.app(scope, receive_with_limit, send)
