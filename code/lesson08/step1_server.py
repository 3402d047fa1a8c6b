"""Lesson 08, step 1: a tool server, the MCP SDK's own class around one typed function.

Run it:  make lesson-08 STEP=1   (serves http://127.0.0.1:8091/mcp until Ctrl+C)
"""

import os

import uvicorn
from mcp.server.mcpserver import MCPServer

from research_agent import BUNDLED_NOTES_DIR, LocalSearch, format_results

PORT = int(os.getenv("NOTES_PORT", "8091"))
notes = LocalSearch([BUNDLED_NOTES_DIR])  # lesson 02's search over the course notes
server = MCPServer("notes", log_level="WARNING")


@server.tool(structured_output=False)
def search_notes(query: str) -> str:
    """Search the course notes about containers and Docker. Returns the best passage."""
    return format_results(list(enumerate(notes.search(query, 1), 1)))


if __name__ == "__main__":
    app = server.streamable_http_app(json_response=True)  # one JSON answer per request
    uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
