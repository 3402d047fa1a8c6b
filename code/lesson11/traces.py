"""What the evaluators read: the spans lesson 09 records for one request (research_agent's GenAI
spans: `invoke_agent`, `chat`, `execute_tool`, under FastAPI's server span), and what they make of
them: the run's trajectory as OpenAI-format messages, its answer, its usage.

Two places hold spans. Offline, an in-process exporter (InMemoryTraces) keeps them in memory;
with lesson 09's viewer up, Phoenix holds them and lesson11.phoenix reads them back. Both become
the same `Span`, so the evaluators never know which.
"""

import json
import re
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

# The search's answer as the model reads it (research_agent's format_results): a block per source,
# "[n] title — url" on its first line and the snippet below, blocks apart by a blank line.
SOURCE_LINE = re.compile(r"\[(\d+)\] .+? — (\S+)")
SEARCH_TOOL = "search_docs"  # the research agent's search of its notes, and the evals' stand-ins


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start_ns: int
    end_ns: int
    error: bool
    attributes: dict = field(default_factory=dict)

    @property
    def operation(self) -> str | None:
        return self.attributes.get("gen_ai.operation.name")

    def json(self, key: str, default=None):
        value = self.attributes.get(key)
        return json.loads(value) if isinstance(value, str) else default


def from_sdk(span) -> Span:
    """An OpenTelemetry SDK span (ReadableSpan) as the evaluators read it."""
    return Span(
        name=span.name,
        trace_id=format(span.context.trace_id, "032x"),
        span_id=format(span.context.span_id, "016x"),
        parent_id=format(span.parent.span_id, "016x") if span.parent else None,
        start_ns=span.start_time,
        end_ns=span.end_time,
        error=span.status.status_code == StatusCode.ERROR,
        attributes=dict(span.attributes or {}),
    )


class InMemoryTraces:
    """Spans kept in this process: a SimpleSpanProcessor into an InMemorySpanExporter, on the
    process's tracer provider (installed here if there is none yet). Install it before building
    the app: the app traces only once a provider exists (research_agent's tracing)."""

    def __init__(self):
        self.exporter = InMemorySpanExporter()
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def take(self) -> list[Span]:
        """The spans finished since the last take()."""
        spans = [from_sdk(s) for s in self.exporter.get_finished_spans()]
        self.exporter.clear()
        return spans


def gen_ai(spans: list[Span]) -> list[Span]:
    """The model calls and tool calls of the run, in the order they started."""
    steps = [s for s in spans if s.operation in ("chat", "execute_tool")]
    return sorted(steps, key=lambda s: s.start_ns)


def trajectory(spans: list[Span]) -> list[dict]:
    """The run as OpenAI-format messages: each model call's answer (its text and the tool calls
    it asked for, from gen_ai.output.messages) and each tool call's result. A call that was asked
    for and never ran (a run paused for approval) is in the first and has no second."""
    messages = []
    for span in gen_ai(spans):
        if span.operation == "chat":
            for out in span.json("gen_ai.output.messages", []):
                message = {"role": "assistant", "content": out.get("content") or ""}
                calls = [
                    {
                        "id": c.get("id") or "",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                    }
                    for c in out.get("tool_calls", [])
                ]
                if calls:
                    message["tool_calls"] = calls
                messages.append(message)
        else:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": span.attributes.get("gen_ai.tool.call.id", ""),
                    "name": span.attributes.get("gen_ai.tool.name", ""),
                    "content": span.attributes.get("gen_ai.tool.call.result", ""),
                    "error": span.error,
                }
            )
    return messages


def tool_calls(messages: list[dict]) -> list[dict]:
    """Every tool call the model asked for: {"name", "args", "ran"}; `ran` when a tool span has
    its id."""
    ran = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
    return [
        {
            "name": c["function"]["name"],
            "args": json.loads(c["function"]["arguments"]),
            "ran": c["id"] in ran,
        }
        for m in messages
        if m["role"] == "assistant"
        for c in m.get("tool_calls", [])
    ]


def answer(spans: list[Span]) -> str | None:
    """The agent's answer: the last message of its `invoke_agent` span, what the agent returned
    after every middleware (None: the run ended without one, paused for approval or failed)."""
    for span in spans:
        if span.attributes.get("gen_ai.operation.name") == "invoke_agent":
            out = (span.json("gen_ai.output.messages") or [{}])[-1]
            return None if out.get("tool_calls") or span.error else out.get("content")
    return None


def sources(messages: list[dict]) -> dict[int, str]:
    """The sources the search returned in this run, by the number the answer cites them with.

    Read from the search's own answers only, and in each from the first line of a block: a snippet
    is a note's text, and its author may write a line that looks like a source there (another
    tool's output too). The run gives a source one number in all its searches, so a number that
    names two URLs has been forged, and names none."""
    found: dict[int, set[str]] = {}
    for m in messages:
        if m["role"] == "tool" and not m["error"] and m.get("name") == SEARCH_TOOL:
            for block in m["content"].split("\n\n"):
                header = SOURCE_LINE.fullmatch(block.split("\n", 1)[0])
                if header:
                    found.setdefault(int(header[1]), set()).add(header[2])
    return {n: next(iter(urls)) for n, urls in found.items() if len(urls) == 1}


def usage(spans: list[Span]) -> dict:
    """What the run cost, as its spans say: tool calls, model calls, tokens and seconds (the
    request's server span, or the agent's when there is no server span)."""
    steps = gen_ai(spans)
    chats = [s for s in steps if s.operation == "chat"]
    tokens = sum(
        s.attributes.get("gen_ai.usage.input_tokens", 0)
        + s.attributes.get("gen_ai.usage.output_tokens", 0)
        for s in chats
    )
    roots = [s for s in spans if s.parent_id is None] or spans
    seconds = max((s.end_ns - s.start_ns for s in roots), default=0) / 1e9
    return {
        "tool_calls": len(steps) - len(chats),
        "model_calls": len(chats),
        "tokens": tokens,
        "seconds": round(seconds, 3),
    }
