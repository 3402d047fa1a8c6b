"""The agent as the service runs it: lesson 02's ResearchAgent (research_agent/agent.py) given its
later layers' tools and middleware.

- the search tool: lesson 02's (local or DuckDuckGo), or lesson 08's from an MCP gateway when
  MCP_GATEWAY_URL is set (research_agent/mcp/tools.py);
- run_python, lesson 04's sandbox, when SANDBOX_ENABLED (research_agent/sandbox/python_tool.py),
  each run a span of lesson 09's (TracedRunner, research_agent/tracing/otel.py);
- `agent_tool_calls_total`, counted around the search tool's middleware
  (research_agent/observability/metrics.py).

The app (research_agent/app.py), lesson 05's worker and the benchmarks build it here.
"""

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool

from .agent import SYSTEM_PROMPT, ResearchAgent
from .observability.metrics import ToolCallMetrics, request_id
from .search import make_search_tool
from .settings import Settings


def search_tool(settings: Settings) -> BaseTool:
    if settings.mcp.MCP_GATEWAY_URL:  # lesson 08: the tool lives behind MCP
        from .mcp.tools import make_mcp_search_tool

        return make_mcp_search_tool(settings.mcp)
    return make_search_tool(settings)


def optional_tools(settings: Settings) -> list[BaseTool]:
    """run_python when SANDBOX_ENABLED, each run a `sandbox run` span (lesson 09; no span while
    tracing is off). Imported only then, with the Docker SDK behind it: a default start does not
    pay for a tool that is off (`make bench-start-host`)."""
    if not settings.sandbox.enabled:
        return []
    from .sandbox.python_tool import sandbox_tools
    from .tracing.otel import TracedRunner

    return sandbox_tools(settings.sandbox, request_id, around=TracedRunner)


def build_agent(
    settings: Settings,
    model: BaseChatModel | None = None,
    tool: BaseTool | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> ResearchAgent:
    tool = tool if tool is not None else search_tool(settings)
    return ResearchAgent(
        settings,
        model=model,
        tool=tool,
        system_prompt=system_prompt,
        tools=optional_tools(settings),
        middleware=[ToolCallMetrics(tool.name)],
    )
