"""Lesson 08, going further: MCP sessions, bounded per client.

Each MCP session costs the gateway memory and a task until it ends. The SDK bounds them in total
(`max_sessions`, 503 beyond) and ends idle ones (`session_idle_timeout`, 30 minutes by default):
anyone who can reach the port could still fill them all with `initialize` POSTs and leave the agent
without a session. Here:

- each client (named by its bearer token; every client without one is "anonymous") holds at most
  `per_client` sessions: an initialize beyond that gets 429 in the course's error shape, so an
  anonymous flood fills the anonymous share only, and the agent's token keeps its own;
- a session with no request for `idle_seconds` ends (the client's next request gets 404 and it
  opens a new session, as MCP clients do);
- a session answers only the client that opened it: another client's requests get the 404 of an
  unknown session.
"""

import contextlib

from fastmcp.server.http import StreamableHTTPASGIApp
from starlette.responses import JSONResponse

from lesson08.call_limits import REFUSED, identify
from research_agent import error_body  # the course's error shape (the installed package)

SESSION_HEADER = "mcp-session-id"


def mcp_endpoint(app) -> StreamableHTTPASGIApp:
    """FastMCP's MCP route, which holds the SDK's session manager once the app has started."""
    for route in app.routes:
        endpoint = getattr(route, "endpoint", None) or getattr(route, "app", None)
        if isinstance(endpoint, StreamableHTTPASGIApp):
            return endpoint
    raise LookupError("no Streamable HTTP route in this app")


def limit_sessions(app, *, idle_seconds: float, total: int) -> None:
    """The SDK's idle timeout and total limit, on the session manager FastMCP makes at start."""
    inner, endpoint = app.router.lifespan_context, mcp_endpoint(app)

    @contextlib.asynccontextmanager
    async def lifespan(starlette_app):
        async with inner(starlette_app) as state:
            manager = endpoint.session_manager
            manager.session_idle_timeout, manager.max_sessions = idle_seconds, total
            yield state

    app.router.lifespan_context = lifespan


class SessionGuard:
    """ASGI middleware in front of the MCP endpoint: sessions per client, and whose each one is."""

    def __init__(self, app, *, clients: dict, per_client: int, manager, path: str = "/mcp"):
        self.app, self.clients, self.per_client, self.path = app, clients, per_client, path
        self.manager = manager  # the SDK's session manager (it exists once the app has started)
        self.owner: dict[str, str] = {}  # session id -> client
        self.opening: dict[str, int] = {}  # initialize requests in flight per client

    def held(self, client: str) -> int:
        live = self.manager()._server_instances  # the SDK's open sessions: ended ones are gone
        for session in [s for s in self.owner if s not in live]:
            del self.owner[session]
        return sum(1 for c in self.owner.values() if c == client) + self.opening.get(client, 0)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].rstrip("/") != self.path:
            return await self.app(scope, receive, send)  # /health, /pins, /metrics
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = identify(self.clients, headers.get("authorization"))
        session = headers.get(SESSION_HEADER)
        if session is not None:
            if self.owner.get(session, client) != client:
                body = error_body("not_found", "Session not found.")
                return await JSONResponse(body, status_code=404)(scope, receive, send)
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":  # without a session: the SDK answers it (400 or 405)
            return await self.app(scope, receive, send)
        if self.held(client) >= self.per_client:
            REFUSED.labels("429").inc()
            body = error_body(
                "too_many_sessions",
                f"This client holds {self.per_client} MCP sessions already; close one "
                "(DELETE /mcp) or reuse it.",
            )
            response = JSONResponse(body, status_code=429, headers={"Retry-After": "5"})
            return await response(scope, receive, send)

        async def send_and_record(message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                for key, value in message.get("headers", []):
                    if key.decode("latin-1").lower() == SESSION_HEADER:
                        self.owner[value.decode("latin-1")] = client
            await send(message)

        self.opening[client] = self.opening.get(client, 0) + 1
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.opening[client] -= 1
