"""The research agent: a LangChain 1.x tool-calling agent (create_agent) with one search tool.

Without OPENAI_API_KEY it runs the deterministic OfflineResearchModel
(research_agent/offline_model.py) through the same agent loop, tools and middleware as ChatOpenAI
would.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelCallLimitMiddleware
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.tools import BaseTool
from langgraph.errors import GraphBubbleUp

from .offline_model import OfflineResearchModel
from .search import format_results, make_search_tool
from .settings import AgentSettings
from .web.errors import UpstreamError, UpstreamTimeoutError, as_app_error

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a research assistant for a course on containerizing AI agents.\n"
    "Use the search tool to find sources before answering; "
    "search again with other words if the results are poor.\n"
    "Answer concisely from the search results only, "
    "and cite them inline with their numbers, like [1] or [2].\n"
    "If the search fails or finds nothing relevant, say so instead of guessing."
)


def build_model(settings: AgentSettings) -> BaseChatModel:
    if settings.offline:
        return OfflineResearchModel(token_delay_ms=settings.OFFLINE_TOKEN_DELAY_MS)
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=settings.MODEL_NAME,
        api_key=settings.OPENAI_API_KEY,
        base_url=settings.OPENAI_BASE_URL or None,
        temperature=settings.TEMPERATURE,
        stream_usage=True,  # without it, streaming through a custom base URL reports no usage
        timeout=settings.REQUEST_TIMEOUT_SECONDS,
        max_retries=settings.OPENAI_MAX_RETRIES,
    )


# --- Tool calls: timeouts, failures and source numbering ------------------------------------------


@dataclass
class RunContext:
    """Per-run state shared with the tool middleware (passed as the agent's runtime context)."""

    sources: list[dict] = field(
        default_factory=list
    )  # every distinct source found, numbered from 1
    steps: list[dict] = field(default_factory=list)  # one per tool call, in completion order

    def number(self, source: dict) -> int:
        for n, known in enumerate(self.sources, 1):
            if known["url"] == source["url"]:
                return n
        self.sources.append(source)
        return len(self.sources)


class SearchToolMiddleware(AgentMiddleware):
    """Bounds each tool call with a timeout and turns failures into ToolMessage(status="error").

    A tool that raises would otherwise abort the whole run. It must be async: the agent runs under
    ainvoke/astream, where a sync-only wrap_tool_call fails with NotImplementedError. It also
    numbers sources across all calls of a run, so that [n] means the same source everywhere.
    """

    def __init__(self, timeout_seconds: float, tool_name: str | None = None):
        super().__init__()
        self.timeout_seconds = timeout_seconds
        self.tool_name = tool_name  # the search tool; other tools (run_python) pass through

    async def awrap_tool_call(self, request, handler):
        call = request.tool_call
        if self.tool_name and call["name"] != self.tool_name:
            return await handler(request)
        context = (
            request.runtime.context
            if isinstance(request.runtime.context, RunContext)
            else RunContext()
        )
        query = call["args"].get("query", call["args"])
        step = {
            "call_id": call["id"],
            "tool": call["name"],
            "input": str(query),
            "status": "success",
        }
        try:
            result = await asyncio.wait_for(handler(request), self.timeout_seconds)
        except GraphBubbleUp:
            raise
        except TimeoutError:
            return self._error(
                call, context, step, "search_timeout", f"timed out after {self.timeout_seconds:g} s"
            )
        except Exception as exc:  # DDGSException, RatelimitException, DNS and HTTP errors...
            logger.warning(
                "tool call failed", extra={"tool": call["name"], "error": repr(exc)[:300]}
            )
            return self._error(
                call, context, step, "search_unavailable", f"{type(exc).__name__}: {exc}"[:300]
            )
        if not isinstance(result, ToolMessage) or result.status == "error":
            if isinstance(
                result, ToolMessage
            ):  # e.g. invalid arguments, reported by the ToolNode itself
                return self._error(call, context, step, "tool_error", result.text[:300])
            return result
        found = result.artifact if isinstance(result.artifact, list) else []
        numbered = [(context.number(s), s) for s in found]
        step["sources"] = [n for n, _ in numbered]
        context.steps.append(step)
        return ToolMessage(
            content=format_results(numbered),
            tool_call_id=call["id"],
            name=call["name"],
            artifact={"sources": [{"n": n, **s} for n, s in numbered]},
        )

    @staticmethod
    def _error(
        call: dict, context: RunContext, step: dict, error_type: str, message: str
    ) -> ToolMessage:
        step.update(status="error", error=message, error_type=error_type)
        context.steps.append(step)
        return ToolMessage(
            content=f"Error: the search failed ({message}). "
            "Try again later or answer without sources.",
            tool_call_id=call["id"],
            name=call["name"],
            status="error",
            artifact={"sources": [], "error": {"type": error_type, "message": message}},
        )


# --- The agent the service runs ------------------------------------------------------------------


class ResearchAgent:
    """The search tool, the model and the loop between them. Later layers come in as arguments
    (research_agent/tools.py builds the agent the service runs): more `tools`, more `middleware`
    around the two below, and per run, LangChain `callbacks`."""

    def __init__(
        self,
        settings: AgentSettings,
        model: BaseChatModel | None = None,
        tool: BaseTool | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        tools: Sequence[BaseTool] = (),
        middleware: Sequence[AgentMiddleware] = (),
    ):
        self.settings = settings
        self.model_label = settings.model_label
        self.search_backend = settings.search_backend
        self.tool = tool if tool is not None else make_search_tool(settings)
        self.model = model if model is not None else build_model(settings)
        self.graph = create_agent(
            self.model,
            [self.tool, *tools],
            system_prompt=system_prompt,
            # [start:middleware]
            middleware=[
                *middleware,
                SearchToolMiddleware(settings.SEARCH_TIMEOUT_SECONDS, self.tool.name),
                ModelCallLimitMiddleware(run_limit=settings.MAX_MODEL_CALLS, exit_behavior="end"),
            ],
            # [end:middleware]
            context_schema=RunContext,
            name="research-agent",  # the agent's name in traces: `invoke_agent research-agent`
        )

    async def research(self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()) -> dict:
        """Run the agent to completion: {response, steps, sources, tokens_used}."""
        context = RunContext()
        try:
            state = await asyncio.wait_for(
                self.graph.ainvoke(
                    {"messages": [HumanMessage(query)]},
                    {"callbacks": list(callbacks)},
                    context=context,
                ),
                self.settings.REQUEST_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            raise self._app_error(exc) from exc
        return self._result(state["messages"][1:], context)

    async def stream(
        self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()
    ) -> AsyncIterator[tuple[str, dict]]:
        """Yield ("token", {text}), ("tool", step) ... then ("final", result) or raise an AppError.

        The graph runs in its own task feeding a queue, so the overall deadline can be enforced
        between events without cancelling the consumer, and a client that goes away stops the run.
        """
        context, queue = RunContext(), asyncio.Queue()
        done = object()

        async def produce() -> None:
            try:
                async for mode, data in self.graph.astream(
                    {"messages": [HumanMessage(query)]},
                    {"callbacks": list(callbacks)},
                    stream_mode=["updates", "messages"],
                    context=context,
                ):
                    await queue.put((mode, data))
                await queue.put((done, None))
            except BaseException as exc:  # handed to the consumer, which raises it
                await queue.put((done, exc))

        task = asyncio.create_task(produce())
        deadline = asyncio.get_running_loop().time() + self.settings.REQUEST_TIMEOUT_SECONDS
        messages: list[BaseMessage] = []
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    mode, data = await asyncio.wait_for(queue.get(), max(remaining, 0))
                except TimeoutError as exc:
                    raise self._app_error(exc) from exc
                if mode is done:
                    if data is not None:
                        raise self._app_error(data) from data
                    break
                if mode == "messages":
                    chunk, meta = data
                    from_model = meta.get("langgraph_node") == "model"
                    if from_model and isinstance(chunk, AIMessageChunk) and chunk.text:
                        yield "token", {"text": chunk.text}
                    continue
                for update in data.values():
                    for message in (
                        (update or {}).get("messages", []) if isinstance(update, dict) else []
                    ):
                        messages.append(message)
                        if isinstance(message, ToolMessage):
                            yield "tool", self._tool_event(message, context)
            yield "final", self._result(messages, context)
        finally:
            task.cancel()

    @staticmethod
    def _tool_event(message: ToolMessage, context: RunContext) -> dict:
        step = next((s for s in context.steps if s["call_id"] == message.tool_call_id), {})
        artifact = message.artifact if isinstance(message.artifact, dict) else {}
        return {
            "tool": message.name,
            "input": step.get("input"),
            "status": message.status,
            "sources": artifact.get("sources", []),
            "error": artifact.get("error"),
        }

    def _result(self, messages: list[BaseMessage], context: RunContext) -> dict:
        ai_messages = [m for m in messages if isinstance(m, AIMessage)]
        usage = [m.usage_metadata for m in ai_messages if m.usage_metadata]
        tokens = sum(u.get("input_tokens", 0) + u.get("output_tokens", 0) for u in usage)
        final = next((m for m in reversed(ai_messages) if not m.tool_calls), None)
        steps = [
            {k: v for k, v in s.items() if k not in ("call_id", "error_type")}
            for s in context.steps
        ]
        failed = [s for s in context.steps if s["status"] == "error"]
        if context.steps and len(failed) == len(context.steps) and not context.sources:
            # Every search failed and there is nothing to cite: a research answer is not possible.
            if all(s["error_type"] == "search_timeout" for s in failed):
                raise UpstreamTimeoutError(
                    f"search timed out: {failed[-1]['error']}", error_type="search_timeout"
                )
            raise UpstreamError(
                f"search backend failed: {failed[-1]['error']}", error_type="search_unavailable"
            )
        return {
            "response": final.text if final else "",
            "steps": steps,
            "sources": context.sources,
            "tokens_used": tokens,
        }

    def _app_error(self, exc: BaseException) -> BaseException:
        """Provider and timeout errors become the service's errors; others stay unhandled (500)."""
        return as_app_error(exc, self.settings.REQUEST_TIMEOUT_SECONDS)


# --- What the service runs: the agent, or a layer around it ---------------------------------------


class Runs(Protocol):
    """What the service runs (research_agent/service.py): the agent, or a layer around it that
    keeps its labels and its two ways to run (access/usage.py's Counted, until_cut.py's
    UntilCut)."""

    @property
    def model_label(self) -> str: ...

    @property
    def search_backend(self) -> str: ...

    async def research(self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()) -> dict: ...

    def stream(
        self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()
    ) -> AsyncIterator[tuple[str, dict]]: ...


class AroundAgent:
    """A layer around the agent (or around another layer): the agent's labels, read through, and
    `research` and `stream` of its own, which run `self.agent`'s."""

    def __init__(self, agent: Runs):
        self.agent = agent

    @property
    def model_label(self) -> str:
        return self.agent.model_label

    @property
    def search_backend(self) -> str:
        return self.agent.search_backend
