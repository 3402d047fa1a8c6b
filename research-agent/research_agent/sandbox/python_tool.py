"""The research agent's run_python tool: lesson 04's sandbox, off unless SANDBOX_ENABLED.

Off by default because it needs the Docker API, and access to the Docker API is root on the host
(docs/04-sandboxed-tools.md, section 8). When it is on, a model can run Python to compute what it
cannot read: each call runs in a throwaway container with the limits of
research_agent/sandbox/runner.py.
"""

import atexit
import json
import logging
from collections.abc import Callable

from langchain_core.tools import BaseTool, ToolException, tool

from ..settings import SandboxConfig
from .admission import QueuedRunner
from .parts import sandbox_runner
from .runner import SandboxError, SandboxUnavailable

logger = logging.getLogger(__name__)


def make_run_python_tool(runner: QueuedRunner, request_id: Callable[[], str]) -> BaseTool:
    """The agent's tool: the model writes a program, the sandbox runs it, the model reads it.

    `request_id()` names the request that made the call: on the container's label, or in the log
    line naming a container started ahead (Going further).
    """
    c = runner.config

    @tool(response_format="content_and_artifact")
    async def run_python(code: str) -> tuple[str, dict]:
        """Run a Python program in a sandbox and return its stdout, stderr and exit code."""
        result = await runner.arun(code, request_id=request_id())
        return json.dumps(result.as_dict()), {"code": code, "result": result.as_dict()}

    network = "no network"
    if c.egress_on:
        network = f"HTTP(S) only to {' '.join(c.allowed_hosts.split()) or 'declared APIs'}"
    run_python.description = (
        f"Run a Python 3.11 program in a throwaway sandbox: standard library only, {network}, no "
        f"files kept, {c.timeout_seconds:g} s, {c.memory} of memory. Print what you need to see: "
        "stdout, stderr and the exit code come back as JSON."
    )
    return run_python


class ReportingRunner:
    """Lesson 04's runner, whose unavailability is a tool error the model reads, not a failed
    research run."""

    def __init__(self, runner: QueuedRunner):
        self.runner, self.config = runner, runner.config

    async def arun(self, *args, **kwargs):
        try:
            return await self.runner.arun(*args, **kwargs)
        except SandboxError as exc:
            raise ToolException(f"Error: the Python sandbox is unavailable ({exc}).") from exc


def sandbox_tools(
    config: SandboxConfig, request_id: Callable[[], str], around: Callable = lambda runner: runner
) -> list[BaseTool]:
    """[run_python], its runner built from `config` (the service's SANDBOX_* settings, when
    SANDBOX_ENABLED: research_agent/tools.py), inside what the service puts `around` each run.
    Called once, off the event loop, at start-up."""
    runner = sandbox_runner(config)
    try:  # containers a crashed run of this service left behind
        logger.info("sandbox ready", extra={"removed_leftovers": runner.sweeper.sweep()})
    except SandboxUnavailable as exc:
        logger.warning("sandbox unavailable; run_python will report it", extra={"error": str(exc)})
    if runner.pool is not None:
        runner.pool.start()  # the sweep's timer starts with the first run, on the event loop
    if config.pool_size or config.egress_on:
        atexit.register(runner.close)  # the pool's idle containers and the proxy go with it
    reporting = ReportingRunner(runner)
    tool = make_run_python_tool(around(reporting), request_id)
    tool.handle_tool_error = True  # a ToolException becomes the tool's answer, status "error"
    return [tool]
