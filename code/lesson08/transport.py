"""What every lesson 08 MCP server shares: where it listens, which Origin and Host it answers.

The MCP spec asks a local server to bind to 127.0.0.1 and to check `Origin` on every request, so a
web page the learner happens to open cannot drive the server through the browser (DNS
rebinding). The official SDK does the check (mcp.server.transport_security): a foreign Origin gets
403, an unknown Host 421. In a container the server binds 0.0.0.0 on its own network, and the Host
it answers is its container name, so both lists come from settings. And `checked_once`: a typed
answer sent validated once, not twice.
"""

import logging

import anyio
import pydantic_core
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel
from pydantic_settings import BaseSettings

LOOPBACK_ORIGINS = "http://127.0.0.1:*,http://localhost:*,http://[::1]:*"
LOOPBACK_HOSTS = "127.0.0.1:*,localhost:*,[::1]:*"


class ServerSettings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # Comma-separated; "host:*" allows any port. The gateway adds its container names in Compose.
    MCP_ALLOWED_ORIGINS: str = LOOPBACK_ORIGINS
    MCP_ALLOWED_HOSTS: str = LOOPBACK_HOSTS


def transport_security(settings: ServerSettings) -> TransportSecuritySettings:
    def split(value: str) -> list[str]:
        return [item.strip() for item in value.split(",") if item.strip()]

    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_origins=split(settings.MCP_ALLOWED_ORIGINS),
        allowed_hosts=split(settings.MCP_ALLOWED_HOSTS),
    )


class ClosedStreamNoise(logging.Filter):
    """The SDK logs a traceback ("Error in standalone SSE writer", ClosedResourceError) whenever a
    client ends its session while its GET stream is open: the session's end closes the stream
    under the writer. Nothing failed, so nothing is logged; any other error still is."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (
            record.getMessage() == "Error in standalone SSE writer"
            and isinstance(error, anyio.ClosedResourceError)
        )


def quiet_closed_streams() -> None:
    logging.getLogger("mcp.server.streamable_http").addFilter(ClosedStreamNoise())


def checked_once(answer: BaseModel) -> CallToolResult:
    """A tool's typed answer as the SDK would send it (the model as JSON text for the model to
    read, and as structured content), validated once.

    Returned as a model, the SDK validates it twice: against the tool's return model (pydantic),
    then against the JSON Schema made from that same model (`jsonschema.validate`, which checks the
    schema itself too, at every call). Returned as a `CallToolResult`, the SDK checks its structured
    content against the return model and sends it: the same check, once."""
    text = pydantic_core.to_json(answer, fallback=str, indent=2).decode()
    return CallToolResult(
        content=[TextContent(type="text", text=text)],
        structuredContent=answer.model_dump(mode="json", by_alias=True),
    )
