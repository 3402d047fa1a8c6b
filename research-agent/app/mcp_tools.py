"""The search tool from an MCP gateway (lesson 08), when MCP_GATEWAY_URL is set.

langchain-mcp-adapters turns the gateway's tool into a LangChain tool; this module gives it the
shape the agent's other search tools have: text for the model, the list of sources as the
artifact. The tool list is fetched on the first call (the gateway may start after the agent) and
kept; a gateway that is down is a tool error the model reads, as a search backend's would be.
"""

import logging

from langchain_core.tools import BaseTool, StructuredTool, ToolException
from langchain_mcp_adapters.client import MultiServerMCPClient

from .config import Settings
from .search import format_results

logger = logging.getLogger(__name__)


def gateway_client(settings: Settings) -> MultiServerMCPClient:
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


def make_mcp_search_tool(settings: Settings) -> BaseTool:
    client = gateway_client(settings)
    name = settings.MCP_SEARCH_TOOL
    found: dict[str, BaseTool] = {}

    async def remote() -> BaseTool:
        if name not in found:
            tools = {t.name: t for t in await client.get_tools()}
            if name not in tools:
                raise ToolException(f"The MCP gateway offers no tool {name!r} to this agent.")
            found[name] = tools[name]
        return found[name]

    async def search(query: str) -> tuple[str, list[dict]]:
        try:
            tool = await remote()
            content, artifact = await tool.coroutine(query=query)
        except ToolException:
            raise
        except Exception as exc:  # connection refused arrives wrapped in task-group errors
            raise ToolException(f"The MCP gateway is unavailable ({_root(exc)}).") from exc
        structured = (artifact or {}).get("structured_content") or {}
        sources = [
            {"title": s["title"], "url": s["url"], "snippet": s.get("snippet", "")}
            for s in structured.get("sources", [])
            if isinstance(s, dict) and s.get("url")
        ]
        return format_results(list(enumerate(sources, 1))), sources

    return StructuredTool.from_function(
        coroutine=search,
        name=name,
        description="Search the course notes about containers, Docker and deploying AI agents "
        "(served over MCP). Input: a search query. Returns numbered passages with their paths.",
        response_format="content_and_artifact",
    )
