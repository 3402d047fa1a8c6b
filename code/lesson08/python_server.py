"""Lesson 08: lesson 04's sandbox as an MCP server, `run_python`.

Run it:  make lesson-08     (in Compose: the gateway starts it on demand, beside the notes server)
  or:    .venv/lesson08/bin/python -m lesson08.python_server   (needs Docker, make sandbox-image)

The sandbox stays the boundary: each call runs in a throwaway container with lesson 04's limits
(no network, read-only, memory, pids, time, its own uid, seccomp). This server is only its front
door over MCP. In Compose it has no Docker socket: DOCKER_HOST names a guard that lets through
only lesson 04's sandbox create and the calls a run makes (code/lesson08/docker_guard.py).
"""

import json

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.requests import Request
from starlette.responses import JSONResponse

from lesson08.transport import ServerSettings, http_app

# Lesson 04's runner, imported: the same container spec, admission, sweep and pool.
from research_agent import SandboxConfig, SandboxError, sandbox_runner


class Sandbox(SandboxConfig):
    """Of lesson 04's settings: SANDBOX_IMAGE, SANDBOX_TIMEOUT_SECONDS, SANDBOX_MAX_CONCURRENT."""

    settable = frozenset({"image", "timeout_seconds", "max_concurrent"})
    max_concurrent: int = 2  # the sandbox guard relays two streams per run


class Settings(ServerSettings):
    # The gateway that started this server passes its owner label: the sandboxes carry it too
    # (agent-sandbox.owner), and the sandbox guard lets through that owner's containers only.
    GATEWAY_OWNER: str = "lesson08"


settings = Settings()
sandbox = Sandbox(owner=settings.GATEWAY_OWNER)
server = MCPServer(
    "python", instructions="Run short Python programs in a sandbox.", log_level="WARNING"
)
runner = sandbox_runner(sandbox)


@server.tool()
async def run_python(code: str) -> str:
    """Run a Python 3.11 program in a throwaway sandbox (standard library only, no network, no
    files kept). Print what you need to see: stdout, stderr and the exit code come back as JSON."""
    try:
        result = await runner.arun(code, request_id="mcp")
    except SandboxError as exc:  # a sandbox that cannot run is a tool error
        raise ToolError(f"the Python sandbox is unavailable ({exc})") from exc
    return json.dumps(result.as_dict())


@server.custom_route("/health", methods=["GET"])
async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "image": sandbox.image})


app = http_app(server, settings)

if __name__ == "__main__":
    uvicorn.run(app, host=settings.HOST, port=settings.PORT, log_level="warning")
