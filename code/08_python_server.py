"""Lesson 08: lesson 04's sandbox as an MCP server, `run_python`.

Run it:  .venv/bin/python code/08_python_server.py     (needs Docker and `make sandbox-image`)

The sandbox stays the boundary: each call runs in a throwaway container with lesson 04's limits
(no network, read-only, memory, pids, time). This server is only its front door over MCP.
"""

import json
import sys
from pathlib import Path

import uvicorn
from lesson08_transport import ServerSettings, transport_security
from mcp.server.fastmcp import FastMCP
from starlette.requests import Request
from starlette.responses import JSONResponse

AGENT_DIR = str(Path(__file__).resolve().parents[1] / "research-agent")
if AGENT_DIR not in sys.path:
    sys.path.insert(0, AGENT_DIR)
from app.python_tool import ReportingRunner  # noqa: E402
from app.sandbox import SandboxConfig  # noqa: E402


class Settings(ServerSettings):
    SANDBOX_IMAGE: str = "agent-sandbox:python"
    SANDBOX_TIMEOUT_SECONDS: float = 10.0
    SANDBOX_MAX_CONCURRENT: int = 2
    SANDBOX_OWNER: str = "lesson-08"


settings = Settings()
runner = ReportingRunner(SandboxConfig.from_settings(settings))
server = FastMCP(
    "python",
    instructions="Run short Python programs in a sandbox.",
    host=settings.HOST,
    transport_security=transport_security(settings),
)


@server.tool()
async def run_python(code: str) -> str:
    """Run a Python 3.11 program in a throwaway sandbox (standard library only, no network, no
    files kept). Print what you need to see: stdout, stderr and the exit code come back as JSON."""
    result = await runner.arun(code, request_id="mcp")
    return json.dumps(result.as_dict())


@server.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "image": settings.SANDBOX_IMAGE})


app = server.streamable_http_app()

if __name__ == "__main__":
    uvicorn.run(app, host=settings.HOST, port=settings.PORT, log_level="warning")
