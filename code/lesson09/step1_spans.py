"""Lesson 09, step 1: one question's run as spans, each printed as it ends.

Run it:  make lesson-09 STEP=1
"""

import asyncio

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from research_agent import Settings, build_agent

QUESTION = "Why use a multi-stage Docker build?"


def one_line(span: ReadableSpan) -> str:
    """A finished span: its name and time, its id and its parent's (or, first of a trace, the
    trace's id), then its gen_ai.* attributes."""
    took = (span.end_time - span.start_time) / 1e6
    context, parent = span.context, span.parent
    up = f"parent {parent.span_id:016x}" if parent else f"trace {context.trace_id:032x}"
    data = " ".join(f"{k}={v}" for k, v in span.attributes.items() if k.startswith("gen_ai."))
    line = f"{span.name:<28} {took:7.1f} ms  span {context.span_id:016x}  {up}\n"
    return line + (f"    {data}\n" if data else "")


provider = TracerProvider()  # where this process's spans go: to each processor added here
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("lesson-09")


class GenAISpans(BaseCallbackHandler):
    """LangChain's callbacks as spans, named by OpenTelemetry's GenAI conventions: the agent's run
    (`invoke_agent`), and under it each model call (`chat`) and each tool call (`execute_tool`)."""

    run_inline = True  # LangChain calls it on the run's event loop, not in a worker thread

    def __init__(self):
        self.spans = {}  # LangChain's run id -> the span its calls go under
        self.started = {}  # the spans this handler started, by run id, to end

    def start(self, run_id, parent_run_id, operation: str, name: str, attributes: dict) -> None:
        parent = self.spans.get(parent_run_id)  # None: under the current span, if there is one
        context = trace.set_span_in_context(parent) if parent else None
        attributes = {"gen_ai.operation.name": operation, **attributes}
        span = tracer.start_span(f"{operation} {name}", context, attributes=attributes)
        self.spans[run_id] = self.started[run_id] = span

    def end(self, run_id, error: BaseException | None = None) -> None:
        self.spans.pop(run_id, None)
        if (span := self.started.pop(run_id, None)) is not None:  # a node's run started none
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        if parent_run_id is None:  # the agent's own run
            name = kwargs["name"]
            self.start(run_id, None, "invoke_agent", name, {"gen_ai.agent.name": name})
        else:  # a node of the agent's graph: no span, what it calls goes under the agent's
            self.spans[run_id] = self.spans.get(parent_run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
        model = kwargs["metadata"].get("ls_model_name") or kwargs["invocation_params"]["_type"]
        self.start(run_id, parent_run_id, "chat", model, {"gen_ai.request.model": model})

    def on_llm_end(self, response, *, run_id, **kwargs):
        span, usage = self.spans[run_id], response.generations[0][0].message.usage_metadata or {}
        span.set_attribute("gen_ai.usage.input_tokens", usage.get("input_tokens", 0))
        span.set_attribute("gen_ai.usage.output_tokens", usage.get("output_tokens", 0))
        self.end(run_id)

    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, **kwargs):
        name = serialized["name"]
        self.start(run_id, parent_run_id, "execute_tool", name, {"gen_ai.tool.name": name})

    def on_chain_end(self, outputs, *, run_id, **kwargs):
        self.end(run_id)

    def on_chain_error(self, error, *, run_id, **kwargs):
        self.end(run_id, error)

    on_tool_end = on_chain_end
    on_llm_error = on_tool_error = on_chain_error


agent = build_agent(Settings())  # lesson 02's agent: offline unless OPENAI_API_KEY is set


async def main() -> None:
    await agent.research(QUESTION, callbacks=[GenAISpans()])


if __name__ == "__main__":
    asyncio.run(main())
