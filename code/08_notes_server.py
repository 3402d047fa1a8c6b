"""Lesson 08: the research agent's local search as an MCP server, `search_notes`.

Run it:  .venv/bin/python code/08_notes_server.py     (PORT=8091 for another port)
Then point any MCP client at http://127.0.0.1:8000/mcp (Streamable HTTP).

No network, no secrets: it reads the notes bundled with the research agent and answers.
"""

import sys
from pathlib import Path

import uvicorn
from lesson08_transport import ServerSettings, transport_security
from mcp.server.fastmcp import FastMCP
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

# The search itself is the research agent's (app/search.py): imported, not copied.
AGENT_DIR = str(Path(__file__).resolve().parents[1] / "research-agent")
if AGENT_DIR not in sys.path:
    sys.path.insert(0, AGENT_DIR)
from app.config import BUNDLED_NOTES_DIR  # noqa: E402
from app.search import LocalSearch, format_results  # noqa: E402


class Settings(ServerSettings):
    NOTES_DIR: Path = BUNDLED_NOTES_DIR
    SEARCH_MAX_RESULTS: int = 4


settings = Settings()
index = LocalSearch([settings.NOTES_DIR])
server = FastMCP(
    "notes",
    instructions="Search the course's notes on containers and agents.",
    host=settings.HOST,
    transport_security=transport_security(settings),
)


class Source(BaseModel):
    title: str
    url: str
    snippet: str


class Found(BaseModel):
    text: str  # what a model reads: numbered passages
    sources: list[Source]  # the same, structured, for the agent to list


@server.tool()
def search_notes(query: str) -> Found:
    """Search the course notes about containers, Docker and deploying AI agents.
    Returns numbered passages ("text") and the sources they came from."""
    sources = index.search(query, settings.SEARCH_MAX_RESULTS)
    return Found(text=format_results(list(enumerate(sources, 1))), sources=sources)


@server.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "sections": len(index.sections)})


app = server.streamable_http_app()

if __name__ == "__main__":
    uvicorn.run(app, host=settings.HOST, port=settings.PORT, log_level="warning")
