"""The Host names a service answers, against DNS rebinding: Starlette's TrustedHostMiddleware
decides, and a refusal is a 400 in the course's error shape (`untrusted_host`).

A page on another site can point its own name at 127.0.0.1 once a browser has loaded it; the
browser then takes an API on loopback for that page's own origin, so the page may post to it and
read the answers. Its requests still carry the page's name in Host, so a service that answers only
the names it is served under refuses them. Starlette reads the Host header as HTTP writes it (an
IPv6 address in brackets, the port set aside) and matches names (`*.example.com` too); its own
refusal is plain text, so it is asked for the verdict only. It checks that a port is digits, not
that it is one: a port outside 1-65535 is refused here. No side effects on import.
"""

from collections.abc import Sequence

from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .error_shape import error_body

UNTRUSTED_HOST = "this API is not served under that host name"
_PASSED = "allowed_hosts.passed"


async def _passed(scope: Scope, receive: Receive, send: Send) -> None:
    scope[_PASSED] = True  # Starlette let the request through: the Host is one of ours


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


async def _dropped(message: Message) -> None:
    pass  # Starlette's plain-text refusal: the error shape is sent instead


def _port_is_one(scope: Scope) -> bool:
    """No port in the Host header, or a port in 1-65535 (`localhost:99999` is no address)."""
    host = next((value for name, value in scope["headers"] if name == b"host"), b"")
    if host.endswith(b"]") or b":" not in host:  # no port (an IPv6 address is in brackets)
        return True
    port = host.rpartition(b":")[2]
    return port.isdigit() and 0 < int(port) <= 65535


class AllowedHostsMiddleware:
    """400 `untrusted_host` for a request whose Host is not in `allowed_hosts` (exact names,
    `[::1]` for an IPv6 address, `*.example.com`; "*" allows any), before any route or body."""

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]):
        self.app = app
        self.judge = TrustedHostMiddleware(
            _passed, allowed_hosts=list(allowed_hosts), www_redirect=False
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        verdict = {"type": scope["type"], "headers": scope["headers"]}  # what Starlette reads
        await self.judge(verdict, _no_body, _dropped)
        if verdict.get(_PASSED) and _port_is_one(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            body = error_body("untrusted_host", UNTRUSTED_HOST)
            await JSONResponse(body, status_code=400)(scope, receive, send)
        else:  # a WebSocket handshake: refused (HTTP 403) before it is accepted
            await send({"type": "websocket.close", "code": 1008})
