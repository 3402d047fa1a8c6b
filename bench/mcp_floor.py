"""The floor for `make bench-mcp`: the MCP SDK's minimal server (mcp 2.x, run by lesson 08's
environment as the notes server is) with the notes server's tool body.

The same search over the same notes, returning the same typed answer, with the SDK's defaults
otherwise, except JSON answers and no session (`json_response=True`, `stateless_http=True`, as
the notes server) and its log at WARNING (the notes server's; at INFO the SDK writes a line per
request): no Origin or Host check, no length limit on the query, the search on the event loop,
and no worker thread. What the notes server spends beyond this is what its
protections cost.

Run it as a module (`.venv/lesson08/bin/python -m bench.mcp_floor`, PORT): run as a file, its
folder would come first on the path, and `import mcp` would find bench/mcp.py.
"""

import os

import uvicorn
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from research_agent import BUNDLED_NOTES_DIR, LocalSearch, format_results

index = LocalSearch([BUNDLED_NOTES_DIR])
server = MCPServer("baseline", log_level="WARNING")


class Source(BaseModel):
    title: str
    url: str
    snippet: str


class Found(BaseModel):
    text: str
    sources: list[Source]


@server.tool()
async def search_notes(query: str) -> Found:
    """Search the course notes about containers, Docker and deploying AI agents."""
    sources = index.search(query, 4)
    return Found(text=format_results(list(enumerate(sources, 1))), sources=sources)


@server.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


if __name__ == "__main__":
    uvicorn.run(
        server.streamable_http_app(json_response=True, stateless_http=True),
        host=os.getenv("HOST", "127.0.0.1"),
        port=int(os.getenv("PORT", "8000")),
        log_level="warning",
    )
