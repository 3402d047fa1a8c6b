"""Phoenix's own middleware hook (PHOENIX_FASTAPI_MIDDLEWARE_PATHS): the viewer answers only the
names it is reached by (VIEWER_ALLOWED_HOSTS) and no web page of another origin.

Phoenix answers every span, its REST and GraphQL APIs and DELETE on the port of its UI, without
authentication; the learner reaches it on 127.0.0.1. A page on another site can still make the
browser ask it: by DNS rebinding (a name of the page's that now points at 127.0.0.1, sent as
Host) or by a request with the page's Origin. The first is a 400 `untrusted_host`, the second a
403 `origin_not_allowed`, in the course's error shape, before Phoenix reads anything.
"""

import os

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import JSONResponse

HOSTS = {
    name.strip().lower()
    for name in os.environ.get("VIEWER_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if name.strip()
}
LOCAL_ORIGINS = ("http://127.0.0.1:", "http://localhost:", "http://[::1]:")


def name_of(host: str) -> str:
    """The host name of a Host header, without its port."""
    host = host.strip().lower()
    return host if host.endswith("]") else host.rsplit(":", 1)[0]


def error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class LocalOnly(BaseHTTPMiddleware):
    async def dispatch(self, request, call_next):
        if name_of(request.headers.get("host", "")) not in HOSTS:
            return error(400, "untrusted_host", "this viewer is not served under that name")
        origin = request.headers.get("origin")
        if origin is not None and not origin.startswith(LOCAL_ORIGINS):
            return error(403, "origin_not_allowed", "no page of another site may call the viewer")
        return await call_next(request)
