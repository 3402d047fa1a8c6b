"""The search tool from an MCP gateway (lesson 08), when MCP_GATEWAY_URL is set.

langchain-mcp-adapters turns the gateway's tool into a LangChain tool; this module gives it the
shape the agent's other search tools have: text for the model, the list of sources as the
artifact. Given only a URL, the adapters open a new MCP session for every call (initialize, list,
call, close: four requests for one search); this module keeps one session open instead and
reuses it for every call. It is opened at the first call (the gateway may start after the agent),
and opened again when it fails: a call on a session that has gone away (the gateway restarted) is
made once more on a new one (search is read-only, so a repeat is harmless). A gateway that is down
is a tool error the model reads, as a search backend's would be.
"""

import asyncio
import logging

from langchain_core.tools import BaseTool, ToolException
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools

from ..search import as_sources, search_tool
from ..settings import McpSettings
from .answers import validate_answers_once

logger = logging.getLogger(__name__)


def gateway_client(settings: McpSettings) -> MultiServerMCPClient:
    headers = {}
    if settings.MCP_GATEWAY_TOKEN is not None:
        headers["Authorization"] = f"Bearer {settings.MCP_GATEWAY_TOKEN.get_secret_value()}"
    connection = {"transport": "streamable_http", "url": settings.MCP_GATEWAY_URL}
    if headers:
        connection["headers"] = headers
    return MultiServerMCPClient({"gateway": connection})


def _root(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return type(exc).__name__


class KeptSession:
    """One MCP session to the gateway, and the tools loaded on it, shared by every call.

    The SDK's session must be closed by the task that opened it, so a task of its own opens it,
    holds it and closes it; callers only send requests on it. It belongs to one event loop: a new
    loop (each `asyncio.run` in tests) gets a new session.
    """

    def __init__(self, client: MultiServerMCPClient, server: str = "gateway"):
        self.client, self.server = client, server
        self._loop = self._lock = self._opened = self._task = None

    async def tools(self) -> tuple[dict[str, BaseTool], bool]:
        """The tools on the kept session, and whether this call opened it."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._opened = loop, asyncio.Lock(), None
        async with self._lock:  # calls at once share one opening
            new = self._opened is None
            if new:
                self._opened = loop.create_future()
                self._task = loop.create_task(self._hold(self._opened))
            opened = self._opened
        try:
            return await asyncio.shield(opened), new
        except BaseException:
            if opened.done():  # it failed to open: the next call tries again
                self.forget(opened)
            raise

    def forget(self, opened=None) -> None:
        """Drop the session (after a failure on it); the next call opens a new one."""
        if opened is None or opened is self._opened:
            if self._task is not None and not self._task.done():
                self._task.cancel()
            self._opened = None

    async def _hold(self, opened: asyncio.Future) -> None:
        try:
            async with self.client.session(self.server) as session:
                validate_answers_once(session)  # each answer still checked, the schema once
                tools = await load_mcp_tools(session)
                opened.set_result({t.name: t for t in tools})
                await asyncio.Event().wait()  # until cancelled: forget() or the loop's end
        except asyncio.CancelledError:
            if not opened.done():
                opened.cancel()
        except Exception as exc:  # connection refused arrives wrapped in task-group errors
            if not opened.done():
                opened.set_exception(exc)
            else:
                logger.warning("MCP session to the gateway lost", extra={"error": _root(exc)})
                self.forget(opened)


def make_mcp_search_tool(settings: McpSettings) -> BaseTool:
    kept = KeptSession(gateway_client(settings))
    name = settings.MCP_SEARCH_TOOL

    async def call(query: str):
        for attempt in (1, 2):
            fresh = True
            try:
                tools, fresh = await kept.tools()
                if name not in tools:
                    raise ToolException(f"The MCP gateway offers no tool {name!r} to this agent.")
                return await tools[name].coroutine(query=query)
            except ToolException:  # the gateway answered: a refusal or the tool's own error
                raise
            except Exception as exc:
                kept.forget()
                if fresh or attempt == 2:  # a new session failed too: the gateway is down
                    raise ToolException(f"The MCP gateway is unavailable ({_root(exc)}).") from exc
                logger.info("MCP session to the gateway failed; opening a new one")

    async def search(query: str) -> list[dict]:
        content, artifact = await call(query)
        structured = (artifact or {}).get("structured_content") or {}
        return as_sources(structured.get("sources", []), "url")

    return search_tool(
        search,
        name,
        "Search the course notes about containers, Docker and deploying AI agents "
        "(served over MCP). Input: a search query. Returns numbered passages with their paths.",
    )
