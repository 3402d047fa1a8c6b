"""The research agent: a LangChain 1.x tool-calling agent (create_agent) with one search tool.

Without OPENAI_API_KEY it runs the deterministic OfflineResearchModel
(research_agent/offline_model.py) through the same agent loop, tools and middleware as ChatOpenAI
would.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelCallLimitMiddleware
from langchain_core.callbacks import AsyncCallbackHandler
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

from .config import Settings
from .errors import AppError, UpstreamError, UpstreamTimeoutError
from .offline_model import OfflineResearchModel
from .search import format_results, make_search_tool
from .telemetry import TOKENS, TOOL_CALLS, request_id

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a research assistant for a course on containerizing AI agents.\n"
    "Use the search tool to find sources before answering; "
    "search again with other words if the results are poor.\n"
    "Answer concisely from the search results only, "
    "and cite them inline with their numbers, like [1] or [2].\n"
    "If the search fails or finds nothing relevant, say so instead of guessing."
)


def build_model(settings: Settings) -> BaseChatModel:
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


def optional_tools(settings: Settings) -> list[BaseTool]:
    """run_python when SANDBOX_ENABLED. Imported only then, with the Docker SDK behind it: a
    default start does not pay for a tool that is off (`make bench-start-host`)."""
    if not settings.SANDBOX_ENABLED:
        return []
    from .python_tool import sandbox_tools

    return sandbox_tools(settings, request_id)


# --- Tool calls: timeouts, failures and source numbering ------------------------------------------


@dataclass
class TokenCount:
    """The tokens a streamed run has used so far, kept as its chunks arrive: what a caller who
    leaves before `final` is charged. A model call's input counts from the moment it is sent
    (estimated by InputCounter, replaced by the model's own figure when it reports usage in the
    turn's last chunk); until then each text chunk streamed counts as one output token."""

    input: int = 0
    output: int = 0
    unreported: int = 0
    # The estimated input of each call sent and not reported on yet, oldest first: the calls of
    # a run follow one another, and the chunks here may lag behind the next call's start.
    sent: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.input + sum(self.sent) + self.output + self.unreported

    def add(self, chunk: AIMessageChunk) -> None:
        if chunk.usage_metadata:
            self.input += chunk.usage_metadata.get("input_tokens", 0)
            self.output += chunk.usage_metadata.get("output_tokens", 0)
            self.unreported = 0
            if self.sent:
                self.sent.pop(0)
        elif chunk.text:
            self.unreported += 1


def estimate_input_tokens(messages: list[BaseMessage]) -> int:
    """About four characters a token, plus a few for each message's role: what a model that has
    not reported its usage yet is charged for the prompt it was sent."""
    return sum(len(m.text) // 4 + 4 for m in messages)


class InputCounter(AsyncCallbackHandler):
    """Counts each model call's input when it is sent. A stream cut during a turn never sees that
    turn's usage, which only its last chunk carries: uncounted, a cut run's largest prompt went
    free (72 input tokens charged instead of 352), and 15 cut runs fit a 2,000-token budget."""

    def __init__(
        self,
        used: TokenCount,
        count: Callable[[list[BaseMessage]], int],
        settle_at_end: bool = False,
    ):
        # settle_at_end: a run without a stream of chunks (ainvoke) learns each call's usage here.
        self.used, self.count, self.settle_at_end = used, count, settle_at_end

    async def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.used.sent.append(sum(self.count(batch) for batch in messages))

    async def on_llm_end(self, response, **kwargs) -> None:
        if not self.settle_at_end:
            return
        for generation in (g for batch in response.generations for g in batch):
            message = getattr(generation, "message", None)
            if isinstance(message, AIMessage) and message.usage_metadata:
                self.used.add(AIMessageChunk(content="", usage_metadata=message.usage_metadata))


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
        TOOL_CALLS.labels(call["name"], "success").inc()
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
        TOOL_CALLS.labels(call["name"], "error").inc()
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


# --- The service used by the routes ---------------------------------------------------------------


class ResearchAgent:
    def __init__(
        self,
        settings: Settings,
        model: BaseChatModel | None = None,
        tool=None,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        self.settings = settings
        self.model_label = settings.model_label
        self.search_backend = settings.search_backend
        if tool is None and settings.MCP_GATEWAY_URL:  # lesson 08: the tool lives behind MCP
            from .mcp_tools import make_mcp_search_tool

            tool = make_mcp_search_tool(settings)
        self.tool = tool if tool is not None else make_search_tool(settings)
        model = model if model is not None else build_model(settings)
        # The model's own count where it has one (the offline model's), an estimate otherwise.
        self.count_input = getattr(model, "count_input_tokens", estimate_input_tokens)
        self.graph = create_agent(
            model,
            [self.tool, *optional_tools(settings)],
            system_prompt=system_prompt,
            # [start:middleware]
            middleware=[
                SearchToolMiddleware(settings.SEARCH_TIMEOUT_SECONDS, self.tool.name),
                ModelCallLimitMiddleware(run_limit=settings.MAX_MODEL_CALLS, exit_behavior="end"),
            ],
            # [end:middleware]
            context_schema=RunContext,
            name="research-agent",  # the agent's name in traces: `invoke_agent research-agent`
        )

    async def research(self, query: str, used: TokenCount | None = None) -> dict:
        """Run the agent to completion: {response, steps, sources, tokens_used}. `used` counts
        the tokens call by call, for a run that fails or times out before its end."""
        context = RunContext()
        counter = InputCounter(used or TokenCount(), self.count_input, settle_at_end=True)
        try:
            state = await asyncio.wait_for(
                self.graph.ainvoke(
                    {"messages": [HumanMessage(query)]}, {"callbacks": [counter]}, context=context
                ),
                self.settings.REQUEST_TIMEOUT_SECONDS,
            )
        except Exception as exc:
            raise self._app_error(exc) from exc
        return self._result(state["messages"][1:], context)

    async def stream(
        self, query: str, used: TokenCount | None = None
    ) -> AsyncIterator[tuple[str, dict]]:
        """Yield ("token", {text}), ("tool", step) ... then ("final", result) or raise an AppError.

        `used` counts the tokens as they come, for a run that ends before its `final`.

        The graph runs in its own task feeding a queue, so the overall deadline can be enforced
        between events without cancelling the consumer, and a client that goes away stops the run.
        """
        context, queue = RunContext(), asyncio.Queue()
        done = object()
        used = used if used is not None else TokenCount()

        async def produce() -> None:
            try:
                async for mode, data in self.graph.astream(
                    {"messages": [HumanMessage(query)]},
                    {"callbacks": [InputCounter(used, self.count_input)]},
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
        finished = False
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
                    if meta.get("langgraph_node") == "model" and isinstance(chunk, AIMessageChunk):
                        used.add(chunk)
                        if chunk.text:
                            yield "token", {"text": chunk.text}
                    continue
                for update in data.values():
                    for message in (
                        (update or {}).get("messages", []) if isinstance(update, dict) else []
                    ):
                        messages.append(message)
                        if isinstance(message, ToolMessage):
                            yield "tool", self._tool_event(message, context)
            result = self._result(messages, context)  # counts the tokens in agent_tokens_total
            finished = True
            yield "final", result
        finally:
            task.cancel()
            if not finished:  # the caller left, or the run failed: what was made still counts
                TOKENS.labels(self.model_label, "input").inc(used.input + sum(used.sent))
                TOKENS.labels(self.model_label, "output").inc(used.output + used.unreported)

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
        usage = {"input": 0, "output": 0}
        for m in ai_messages:
            if m.usage_metadata:
                usage["input"] += m.usage_metadata.get("input_tokens", 0)
                usage["output"] += m.usage_metadata.get("output_tokens", 0)
        for kind, count in usage.items():
            TOKENS.labels(self.model_label, kind).inc(count)
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
            "tokens_used": usage["input"] + usage["output"],
        }

    def _app_error(self, exc: BaseException) -> BaseException:
        """Provider and timeout errors become the service's errors; others stay unhandled (500)."""
        if isinstance(exc, AppError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            limit = self.settings.REQUEST_TIMEOUT_SECONDS
            return UpstreamTimeoutError(
                f"research took longer than {limit:g} s", error_type="timeout"
            )
        try:
            import openai
        except ImportError:  # pragma: no cover - langchain-openai always brings it
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamTimeoutError("the model provider timed out", error_type="model_timeout")
        if isinstance(exc, openai.APIStatusError):
            return UpstreamError(
                f"the model provider answered HTTP {exc.status_code}", error_type="model_error"
            )
        if isinstance(exc, openai.APIError):
            return UpstreamError(
                f"the model provider failed: {type(exc).__name__}", error_type="model_error"
            )
        return exc
