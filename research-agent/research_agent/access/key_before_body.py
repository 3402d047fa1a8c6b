"""The API key of a /v1 POST is checked once its header has arrived, before its body is read.

FastAPI reads a request's body before it runs the route's dependencies, so without this a client
with no key could announce a body and send it a byte at a time, holding a connection (and, behind
a proxy that forwards the body as it comes, one of the proxy's slots to the agent) for as long as
it liked before its 401. Here the same check as the routes' (caller.py, get_caller)
runs on the header alone; the route then reuses the caller it found.
"""

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..web.errors import AppError, api_error_handler
from .caller import VERIFIED_CALLER, bearer, get_caller


class KeyBeforeBodyMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/v1/")
            or not scope["app"].state.api_keys.enabled
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)  # no `receive`: nothing here may read the body
        try:
            caller = await get_caller(request, await bearer(request))
        except AppError as error:
            # The body is never read; the server closes the connection after this answer.
            response = await api_error_handler(request, error)
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[VERIFIED_CALLER] = caller
        await self.app(scope, receive, send)
