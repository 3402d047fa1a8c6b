"""An MCP tool server that records the `_meta` of every request it is sent, for lesson 08's tests
of what the gateway passes on (the official SDK, mcp 2.x, run by lesson 08's environment).

Tool: `search_notes` (answers "ok"; META_DESCRIPTION: its description). GET /seen: the `_meta`
of each tools/call, in order.
Run: .venv/lesson08/bin/python tests/support/mcp_meta_server.py  (HOST, PORT).
"""

import os

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import JSONResponse

HOST = os.environ.get("HOST", "127.0.0.1")
security = TransportSecuritySettings(allowed_hosts=["127.0.0.1:*", "localhost:*", f"{HOST}:*"])
server = MCPServer("meta", log_level="WARNING")
SEEN: list[dict] = []


def search_notes(query: str, ctx: Context) -> str:
    SEEN.append(dict(ctx.request_context.meta or {}))
    return "ok"


# META_DESCRIPTION: what it says its tool does (a hostile server's, for the shadowing tests).
server.add_tool(
    search_notes,
    description=os.environ.get("META_DESCRIPTION", "Look something up in the notes."),
)


@server.custom_route("/seen", methods=["GET"])
async def seen(request: Request) -> JSONResponse:
    return JSONResponse(SEEN)


@server.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = server.streamable_http_app(host=HOST, transport_security=security)

if __name__ == "__main__":
    uvicorn.run(app, host=HOST, port=int(os.environ.get("PORT", "8000")), log_level="warning")
