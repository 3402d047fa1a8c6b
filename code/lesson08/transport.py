"""What every lesson 08 MCP server shares: where it listens, which Origin and Host it answers.

The MCP spec asks a local server to bind to 127.0.0.1 and to check `Origin` on every request, so a
web page the learner happens to open cannot drive the server through the browser (DNS
rebinding). The official SDK does the check (mcp.server.transport_security): a foreign Origin gets
403, an unknown Host 421. In a container the server binds 0.0.0.0 on its own network, and the Host
it answers is its container name, so both lists come from settings.
"""

from mcp.server.transport_security import TransportSecuritySettings
from pydantic_settings import BaseSettings

LOOPBACK_ORIGINS = "http://127.0.0.1:*,http://localhost:*,http://[::1]:*"
LOOPBACK_HOSTS = "127.0.0.1:*,localhost:*,[::1]:*"


class ServerSettings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # Comma-separated; "host:*" allows any port. The gateway adds its container names in Compose.
    MCP_ALLOWED_ORIGINS: str = LOOPBACK_ORIGINS
    MCP_ALLOWED_HOSTS: str = LOOPBACK_HOSTS


def split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def transport_security(settings: ServerSettings) -> TransportSecuritySettings:
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_origins=split(settings.MCP_ALLOWED_ORIGINS),
        allowed_hosts=split(settings.MCP_ALLOWED_HOSTS),
    )


def http_app(server, settings: ServerSettings, **options):
    """A tool server's Streamable HTTP app: both protocol eras on /mcp (a 2026-07-28 request
    stands alone; a handshake-era client's initialize is answered too, with no session kept),
    its Origin and Host checked."""
    return server.streamable_http_app(
        stateless_http=True,
        host=settings.HOST,
        transport_security=transport_security(settings),
        **options,
    )
