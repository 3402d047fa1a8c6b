"""LangChain runs as OpenTelemetry GenAI spans (lesson 09): `invoke_agent {agent}`, `chat {model}`
and `execute_tool {tool}`, from one callback handler (GenAIHandler) that every LangChain run in the
process reports to (instrument_langchain).

research_agent/tracing/otel.py sets tracing up and calls instrument_langchain once a provider is
installed; while tracing is off the handler is never registered. Prompt and answer text stay out of
spans unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT is true.
"""

import asyncio
import json
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

MAX_OPEN_RUNS = 10_000  # LangChain runs followed at once, across all requests

_hook: ContextVar | None = None


def instrument_langchain(capture_content: bool = False) -> "GenAIHandler":
    """Every LangChain run in this process reports to one GenAIHandler: LangChain adds the
    handler a registered configure hook holds to each run it configures, so no call site changes.
    The hook's variable has the handler as its default, so every thread and task sees it.

    Not inheritable: LangChain configures each run a caller starts (the agent's graph, each model
    call, each tool call), while a graph's nodes get only the handlers their parent passes on. So
    the handler never hears of the nodes, which make no span and were most of its callbacks (14
    of 22 for one question)."""
    global _hook
    from langchain_core.tracers.context import register_configure_hook

    if _hook is None:
        # One handler for the whole process, on purpose: the default every context starts with.
        _hook = ContextVar("otel_genai_handler", default=GenAIHandler())  # noqa: B039
        register_configure_hook(_hook, inheritable=False)
    handler = _hook.get()
    handler.capture_content = capture_content
    return handler


def _provider(metadata: dict, serialized: dict) -> str:
    """gen_ai.provider.name: LangChain's `ls_provider` ("openai"), else the model's class."""
    if metadata.get("ls_provider"):
        return str(metadata["ls_provider"])
    return str((serialized or {}).get("id", ["unknown"])[-1]).lower()


def _json(value: Any) -> str:
    return json.dumps(value, default=str)[:8192]


def _assistant(message: Any) -> dict:
    """An answer as gen_ai.output.messages holds it: its text, and the tool calls it asked for
    (name, id, arguments), so a trace shows a call that was asked for and never run."""
    entry = {"role": "assistant", "content": message.text}
    calls = getattr(message, "tool_calls", None)
    if calls:
        entry["tool_calls"] = [
            {"id": c.get("id"), "name": c["name"], "arguments": c.get("args", {})} for c in calls
        ]
    return entry


_USAGE = (gen_ai.GEN_AI_USAGE_INPUT_TOKENS, gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS)


class _Run:
    """A LangChain run that has a span: an agent's, or a model or tool call's."""

    __slots__ = ("span", "agent", "outer", "token", "calls", "usage", "model", "ended", "_context")

    def __init__(self, span: Span, outer: "_Run | None"):
        self.span = span
        self.agent: _Run | None = None  # the agent run it belongs to (itself for an agent)
        self.outer = outer  # the run that enclosed it when it started
        self.token = None  # a tool's: the OpenTelemetry context it made current
        # An agent's own: its model and tool calls still open, their token usage summed, and
        # the provider and model its span shows.
        self.calls: set[UUID] | None = None
        self.usage: dict[str, int] | None = None
        self.model: tuple[str, str] | None = None
        self.ended = False
        self._context = None

    def context(self):
        """An OpenTelemetry context with this span current: the parent of the runs inside."""
        if self._context is None:
            self._context = trace.set_span_in_context(self.span)
        return self._context


# The agent or tool call the code running now is inside. An agent's start sets it in the agent's
# own context, which every node's task and every tool's thread copy; a call's span goes under it.
_enclosing: ContextVar[_Run | None] = ContextVar("otel_genai_enclosing_run", default=None)


def _open_enclosing() -> _Run | None:
    """The innermost enclosing run still open. (An end callback may run in a copy of the
    context its start set: a run that ended may still be the variable's value here.)"""
    run = _enclosing.get()
    while run is not None and run.ended:
        run = run.outer
    return run


class GenAIHandler(BaseCallbackHandler):
    """LangChain callbacks → OpenTelemetry GenAI spans (semantic conventions, "Development").

    The run of the agent graph is `invoke_agent {name}`; each chat model call `chat {model}`
    with gen_ai.usage.input_tokens/output_tokens; each tool call `execute_tool {tool}`, under the
    agent (or the tool call) that encloses it. Graph nodes make no span. A tool's span is the
    current span while it runs, so the sandbox's span nests under it. (A model's is not: its
    start and end callbacks may run in different contexts when it streams, so the HTTPX span of a
    call to a provider sits beside it, under the request.)

    `run_inline`: LangChain calls it in the run's own context (not in a thread), where the
    current span is the request's.
    """

    run_inline = True

    def __init__(self, capture_content: bool = False):
        super().__init__()
        self.capture_content = capture_content
        self.runs: dict[UUID, _Run] = {}  # the runs whose span is open, by LangChain's run id
        self._provider = self._cached = None

    # -- bookkeeping
    def _tracer(self) -> trace.Tracer:
        """The current provider's tracer, made once per provider (a test installs its own)."""
        provider = trace.get_tracer_provider()
        if provider is not self._provider:
            self._provider, self._cached = provider, provider.get_tracer("research-agent.genai")
        return self._cached

    def _start(
        self, run_id, name, kind, attributes, *, agent=False, follow=False, attach=False
    ) -> _Run:
        """Start a run's span under the enclosing run. `follow`: the runs inside go under this
        one; `attach`: its span is the current span in this context too."""
        outer = _open_enclosing()
        span = self._tracer().start_span(
            name,
            context=outer.context() if outer is not None else None,
            kind=kind,
            attributes=attributes,
        )
        run = _Run(span, outer)
        if agent:
            run.agent, run.calls, run.usage = run, set(), {}
        elif outer is not None and outer.agent is not None:
            run.agent = outer.agent
            run.agent.calls.add(run_id)
        if attach:
            run.token = otel_context.attach(run.context())
        if follow:
            _enclosing.set(run)
        self.runs[run_id] = run
        while len(self.runs) > MAX_OPEN_RUNS:  # runs whose end never came: bounded
            self._end(next(iter(self.runs)), TimeoutError("abandoned"), detach=False)
        return run

    def _end(self, run_id: UUID, error: BaseException | None = None, detach=True) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:  # a run without a span (a chain inside a run), or one ended already
            return
        run.ended = True
        if run.agent is run:
            # A call cancelled from outside (a tool's timeout, a caller who left) gets no end
            # callback: its span ends with its agent's, as an error.
            for call in list(run.calls):
                self._end(call, asyncio.CancelledError(), detach=False)
            if run.usage:  # its model calls' usage, summed as they ended
                run.span.set_attributes(run.usage)
        elif run.agent is not None:
            run.agent.calls.discard(run_id)
        if run.token is not None and detach:
            otel_context.detach(run.token)
        if _enclosing.get() is run:
            _enclosing.set(run.outer)
        if error is not None:
            run.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            run.span.set_attribute(error_attributes.ERROR_TYPE, type(error).__qualname__)
        run.span.end()

    # -- the agent
    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        if parent_run_id is not None:
            return  # a chain inside a run (a runnable that a node or tool calls): no span
        name = kwargs.get("name") or "agent"
        self._start(
            run_id,
            f"invoke_agent {name}",
            SpanKind.INTERNAL,
            {
                gen_ai.GEN_AI_OPERATION_NAME: gen_ai.GenAiOperationNameValues.INVOKE_AGENT.value,
                gen_ai.GEN_AI_AGENT_NAME: name,
            },
            agent=True,
            follow=True,
        )

    def on_chain_end(self, outputs, *, run_id, **kwargs):
        run = self.runs.get(run_id) if self.capture_content else None
        if run is not None:
            messages = outputs.get("messages") if isinstance(outputs, dict) else None
            if messages:
                run.span.set_attribute(
                    gen_ai.GEN_AI_OUTPUT_MESSAGES, _json([_assistant(messages[-1])])
                )
        self._end(run_id)

    def on_chain_error(self, error, *, run_id, **kwargs):
        self._end(run_id, error)

    # -- the model
    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kw):
        metadata = kw.get("metadata") or {}
        params = kw.get("invocation_params") or {}
        model = str(
            metadata.get("ls_model_name")
            or params.get("model")
            or params.get("model_name")
            or params.get("_type")
            or "unknown"
        )
        provider = _provider(metadata, serialized)
        attributes = {
            gen_ai.GEN_AI_OPERATION_NAME: gen_ai.GenAiOperationNameValues.CHAT.value,
            gen_ai.GEN_AI_PROVIDER_NAME: provider,
            gen_ai.GEN_AI_REQUEST_MODEL: model,
        }
        if metadata.get("ls_temperature") is not None:
            attributes[gen_ai.GEN_AI_REQUEST_TEMPERATURE] = metadata["ls_temperature"]
        if self.capture_content:
            attributes[gen_ai.GEN_AI_INPUT_MESSAGES] = _json(
                [{"role": m.type, "content": m.text} for batch in messages for m in batch]
            )
        agent = self._start(run_id, f"chat {model}", SpanKind.CLIENT, attributes).agent
        if agent is not None and agent.model != (provider, model):
            # the agent's model, as the conventions ask of invoke_agent (its latest, if it changes)
            agent.model = (provider, model)
            agent.span.set_attributes(
                {gen_ai.GEN_AI_PROVIDER_NAME: provider, gen_ai.GEN_AI_REQUEST_MODEL: model}
            )

    def on_llm_end(self, response, *, run_id, **kwargs):
        run = self.runs.get(run_id)
        if run is not None:
            generation = next((g for batch in response.generations for g in batch), None)
            message = getattr(generation, "message", None)
            usage = getattr(message, "usage_metadata", None) or {}
            meta = getattr(message, "response_metadata", None) or {}
            attributes = {}
            if usage:
                attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] = usage.get("input_tokens", 0)
                attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.get("output_tokens", 0)
                if run.agent is not None:  # summed into the agent's, set when it ends
                    totals = run.agent.usage
                    for attr in _USAGE:
                        totals[attr] = totals.get(attr, 0) + attributes[attr]
            if meta.get("model_name"):
                attributes[gen_ai.GEN_AI_RESPONSE_MODEL] = str(meta["model_name"])
            if meta.get("finish_reason"):
                attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = [meta["finish_reason"]]
            if self.capture_content and message is not None:
                attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES] = _json([_assistant(message)])
            run.span.set_attributes(attributes)
        self._end(run_id)

    def on_llm_error(self, error, *, run_id, **kwargs):
        self._end(run_id, error)

    # -- the tools
    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, **kwargs):
        name = str((serialized or {}).get("name") or kwargs.get("name") or "tool")
        attributes = {
            gen_ai.GEN_AI_OPERATION_NAME: gen_ai.GenAiOperationNameValues.EXECUTE_TOOL.value,
            gen_ai.GEN_AI_TOOL_NAME: name,
            gen_ai.GEN_AI_TOOL_TYPE: "function",
        }
        if kwargs.get("tool_call_id"):
            attributes[gen_ai.GEN_AI_TOOL_CALL_ID] = str(kwargs["tool_call_id"])
        if self.capture_content:
            attributes["gen_ai.tool.call.arguments"] = str(input_str)[:8192]
        self._start(
            run_id,
            f"execute_tool {name}",
            SpanKind.INTERNAL,
            attributes,
            follow=True,
            attach=True,
        )

    def on_tool_end(self, output, *, run_id, **kwargs):
        run = self.runs.get(run_id)
        status = getattr(output, "status", "success")
        if run is not None and status == "error":
            run.span.set_status(Status(StatusCode.ERROR, "tool reported an error"))
            run.span.set_attribute(error_attributes.ERROR_TYPE, "tool_error")
        if run is not None and self.capture_content:
            run.span.set_attribute(
                "gen_ai.tool.call.result", str(getattr(output, "content", output))[:8192]
            )
        self._end(run_id)

    def on_tool_error(self, error, *, run_id, **kwargs):
        self._end(run_id, error)
