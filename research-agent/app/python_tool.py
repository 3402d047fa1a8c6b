"""The research agent's run_python tool: lesson 04's sandbox, off unless SANDBOX_ENABLED.

Off by default because it needs the Docker API, and access to the Docker API is root on the host
(docs/04-sandboxed-tools.md, section 8). When it is on, a model can run Python to compute what it
cannot read: each call runs in a throwaway container with the limits of app/sandbox.py.
"""

import logging
from collections.abc import Callable

from langchain_core.tools import BaseTool, ToolException

from .config import Settings
from .sandbox import SandboxConfig, SandboxRunner, SandboxUnavailable, make_run_python_tool

logger = logging.getLogger(__name__)


class ReportingRunner(SandboxRunner):
    """A runner whose unavailability is a tool error the model reads, not a failed research run."""

    async def arun(self, *args, **kwargs):
        try:
            return await super().arun(*args, **kwargs)
        except SandboxUnavailable as exc:
            raise ToolException(f"Error: the Python sandbox is unavailable ({exc}).") from exc


def sandbox_tools(settings: Settings, request_id: Callable[[], str]) -> list[BaseTool]:
    """[run_python] when SANDBOX_ENABLED, else []. Called once, off the event loop, at start-up."""
    if not settings.SANDBOX_ENABLED:
        return []
    runner = ReportingRunner(
        SandboxConfig(
            image=settings.SANDBOX_IMAGE,
            runtime=settings.SANDBOX_RUNTIME,
            timeout_seconds=settings.SANDBOX_TIMEOUT_SECONDS,
            owner="research-agent",
        )
    )
    try:  # containers a crashed run of this service left behind
        logger.info("sandbox ready", extra={"removed_leftovers": runner.sweep()})
    except SandboxUnavailable as exc:
        logger.warning("sandbox unavailable; run_python will report it", extra={"error": str(exc)})
    tool = make_run_python_tool(runner, request_id)
    tool.handle_tool_error = True  # a ToolException becomes the tool's answer, status "error"
    return [tool]
