"""The middleware stack: request ids, metrics, body limit, access log and the last-resort 500.

Kept libraries do what they do well: asgi-correlation-id reads (or makes) the X-Request-ID and
echoes it, prometheus-fastapi-instrumentator counts and times every request by route template.
The two classes below are by hand because no kept library does their job for an ASGI service: a
body limit that also stops chunked bodies while they are read, and one access-log line per request,
written at its last byte (streams included), that also turns a crash into the error shape.
Both are pure ASGI middlewares (not BaseHTTPMiddleware), so streams pass through untouched.
"""

import logging
import time

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import PrometheusFastApiInstrumentator
from prometheus_fastapi_instrumentator.routing import get_route_name
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability.metrics import HTTP_METRICS
from ..observability.request_ids import install_request_ids
from .body_limit import BodyLimitMiddleware
from .errors import INTERNAL_ERROR, error_response

logger = logging.getLogger(__name__)

LOGGED_PATH_CHARS = 256


class AccessLogMiddleware:
    """One "request" log line per request, at its last byte; a crash becomes a shaped 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, response_started = time.perf_counter(), 500, False

        async def watching_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started, status = True, message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception:
            # What no exception handler turned into a response: the traceback goes to the log only.
            logger.exception("unhandled error")
            if not response_started:
                await error_response(*INTERNAL_ERROR)(scope, receive, watching_send)
        finally:
            # The same route template as the metrics' `handler` label.
            route = get_route_name(Request(scope), should_include_root_path=False) or "none"
            logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"][:LOGGED_PATH_CHARS],
                    "route": route,
                    "status": status,
                    "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    # The address the limits count (after FORWARDED_ALLOW_IPS): who a 429
                    # too_many_auth_failures refused, or who locked an address out.
                    "client": (scope.get("client") or ("unknown",))[0],
                    # key:<name> or addr:<address>, set by the API key check
                    # (research_agent/deps.py)
                    "caller": scope.get("state", {}).get("caller"),
                    # sha256:<8 hex digits> of the key a 401 or 429 refused, or "none" (no key)
                    "key_fingerprint": scope.get("state", {}).get("key_fingerprint"),
                },
            )


def install_middleware(
    app: FastAPI, max_body_bytes: int, key_check: type | None = None
) -> PrometheusFastApiInstrumentator:
    """Outermost first: request id → metrics → access log and 500 → API key (`key_check`, the
    access layer's ASGI middleware: access/key_before_body.py) → body limit → routes.

    Starlette runs the middleware added last first, hence the reverse order of the calls. A new
    concern (API keys, rate limits) is a dependency on the routes, or one more line here.
    """
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    if key_check is not None:
        app.add_middleware(key_check)
    app.add_middleware(AccessLogMiddleware)
    instrumentator = PrometheusFastApiInstrumentator(
        should_group_status_codes=False,  # 502 and 504 mean different things here
        excluded_handlers=["^/metrics$"],
    )
    instrumentator.add(*HTTP_METRICS).instrument(app)
    install_request_ids(app)  # asgi-correlation-id's, with the caller's id only if it is safe
    return instrumentator
