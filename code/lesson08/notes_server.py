"""Lesson 08: the research agent's local search as an MCP server, `search_notes`.

Run it:  .venv/lesson08/bin/python -m lesson08.notes_server     (PORT=8091 for another port)
Then point any MCP client at http://127.0.0.1:8000/mcp (Streamable HTTP).

No network, no secrets: it reads the notes bundled with the research agent and answers.
"""

from pathlib import Path
from typing import Annotated

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse

from lesson08.transport import ServerSettings, http_app
from research_agent import BUNDLED_NOTES_DIR, LocalSearch, format_results


class Settings(ServerSettings):
    NOTES_DIR: Path = BUNDLED_NOTES_DIR
    SEARCH_MAX_RESULTS: int = 4
    SEARCH_THREADS: int = 4  # searches at once, each in a worker thread


settings = Settings()
index = LocalSearch([settings.NOTES_DIR])
server = MCPServer(
    "notes",
    instructions="Search the course's notes on containers and agents.",
    log_level="WARNING",  # not the SDK's INFO line per request: a server log writes errors
)


class Source(BaseModel):
    title: str
    url: str
    snippet: str


class Found(BaseModel):
    text: str  # what a model reads: numbered passages
    sources: list[Source]  # the same, structured, for the agent to list


threads = anyio.CapacityLimiter(settings.SEARCH_THREADS)
# At most the research API's own query length (research_agent/schemas.py), in the schema where
# clients see it.
Query = Annotated[str, Field(min_length=1, max_length=2000)]


@server.tool()
async def search_notes(query: Query) -> Found:
    """Search the course notes about containers, Docker and deploying AI agents.
    Returns numbered passages ("text") and the sources they came from."""
    # Off the event loop: a long search must not stall the server's other requests. A cancelled
    # call (the gateway gave up) returns at once; its thread ends with the search.
    sources = await anyio.to_thread.run_sync(
        index.search, query, settings.SEARCH_MAX_RESULTS, abandon_on_cancel=True, limiter=threads
    )
    return Found(text=format_results(list(enumerate(sources, 1))), sources=sources)


@server.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "sections": len(index.sections)})


# One JSON answer per call: this tool sends nothing to stream.
app = http_app(server, settings, json_response=True)

if __name__ == "__main__":
    uvicorn.run(app, host=settings.HOST, port=settings.PORT, log_level="warning")
