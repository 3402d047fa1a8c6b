"""What every lesson 08 MCP server shares: where it listens, which Origin and Host it answers.

The MCP spec asks a local server to bind to 127.0.0.1 and to check `Origin` on every request, so a
web page the learner happens to open cannot drive the server through the browser (DNS
rebinding). The official SDK does the check (mcp.server.transport_security): a foreign Origin gets
403, an unknown Host 421. In a container the server binds 0.0.0.0 on its own network, and the Host
it answers is its container name, so both lists come from settings.
"""

import hmac

from mcp.server.transport_security import TransportSecuritySettings
from pydantic_settings import BaseSettings
from starlette.responses import JSONResponse

LOOPBACK_ORIGINS = "http://127.0.0.1:*,http://localhost:*,http://[::1]:*"
LOOPBACK_HOSTS = "127.0.0.1:*,localhost:*,[::1]:*"


class ServerSettings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # Comma-separated; "host:*" allows any port. The gateway adds its container names in Compose.
    MCP_ALLOWED_ORIGINS: str = LOOPBACK_ORIGINS
    MCP_ALLOWED_HOSTS: str = LOOPBACK_HOSTS
    # The bearer token /mcp requires (the gateway's launcher sets a new one for each container it
    # starts, and sends it): a neighbour on the tools network cannot call the tools past the
    # gateway's allow-list, caps and call log. Empty: no token asked (a server run by hand).
    MCP_SERVER_TOKEN: str = ""


def split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def transport_security(settings: ServerSettings) -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_origins=split(settings.MCP_ALLOWED_ORIGINS),
        allowed_hosts=split(settings.MCP_ALLOWED_HOSTS),
    )


class RequireToken:
    """ASGI: /mcp answers 401 without `Authorization: Bearer <token>`; /health stays open (the
    launcher asks it whether the server is up)."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            sent = dict(scope["headers"]).get(b"authorization", b"").removeprefix(b"Bearer ")
            if not hmac.compare_digest(sent.strip(), self.token):
                body = {"error": {"type": "unauthorized", "message": "a bearer token is required"}}
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def http_app(server, settings: ServerSettings, **options):
    """A tool server's Streamable HTTP app: both protocol eras on /mcp (a 2026-07-28 request
    stands alone; a handshake-era client's initialize is answered too, with no session kept),
    its Origin and Host checked, and its token when MCP_SERVER_TOKEN is set."""
    app = server.streamable_http_app(
        stateless_http=True,
        host=settings.HOST,
        transport_security=transport_security(settings),
        **options,
    )
    if settings.MCP_SERVER_TOKEN:
        app.add_middleware(RequireToken, token=settings.MCP_SERVER_TOKEN)
    return app
