"""Lesson 09, step 4: the spans go through a write-only ingest, the one way to the viewer.

Run it:  make lesson-09 STEP=4   (the viewer as in step 2; the API on 127.0.0.1:8000, exporting to
the ingest on 127.0.0.1:4318)
"""

import os
import threading
from typing import Annotated, Literal

import httpx
import uvicorn
from fastapi import Body, FastAPI, Header, Request, Response
from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.propagators import TraceResponsePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)
from opentelemetry.trace import Status, StatusCode

from research_agent import Settings, build_agent


def one_line(span: ReadableSpan) -> str:
    """A finished span: its name and time, its id and its parent's (or, first of a trace, the
    trace's id), then its gen_ai.* attributes."""
    took = (span.end_time - span.start_time) / 1e6
    context, parent = span.context, span.parent
    up = f"parent {parent.span_id:016x}" if parent else f"trace {context.trace_id:032x}"
    data = " ".join(f"{k}={v}" for k, v in span.attributes.items() if k.startswith("gen_ai."))
    line = f"{span.name:<28} {took:7.1f} ms  span {context.span_id:016x}  {up}\n"
    return line + (f"    {data}\n" if data else "")


provider = TracerProvider(resource=Resource.create({"service.name": "lesson-09"}))
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=one_line)))
# In batches, from a thread of its own, to OTEL_EXPORTER_OTLP_ENDPOINT (and /v1/traces); the
# batch still waiting is sent when the process exits.
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
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
# FastAPI's own span per request (once a tracer provider is set), whose parent is the span the
# caller's `traceparent` header names, if it sent one. No spans inside it, no metrics, no logs.
app = FastAPI(telemetry={"operation_spans": False, "metrics": False, "logs": False})


@app.middleware("http")
async def name_the_trace(request: Request, call_next):
    response = await call_next(request)
    TraceResponsePropagator().inject(response.headers)  # traceresponse: 00-<trace>-<span>-<flags>
    return response


@app.post("/v1/research")
async def research(query: Annotated[str, Body(min_length=3, max_length=2000, embed=True)]) -> dict:
    return await agent.research(query, callbacks=[GenAISpans()])


VIEWER = os.getenv("VIEWER_URL", "http://127.0.0.1:6006")  # only the ingest is given its address
ingest = FastAPI(telemetry={"tracing": False})  # no spans: each export would be a span to export
viewer = httpx.AsyncClient(base_url=VIEWER, timeout=10)


@ingest.post("/v1/traces")
async def take_spans(
    request: Request,
    content_type: Annotated[Literal["application/x-protobuf"], Header()],
    content_length: Annotated[int, Header(le=16 * 1024 * 1024)],
) -> Response:
    """An OTLP export, passed to the viewer: the one request the ingest serves. Another path is
    a 404, another method a 405, another body (not protobuf, over 16 MiB, no length) a 422."""
    body = await request.body()
    sent = await viewer.post("/v1/traces", content=body, headers={"content-type": content_type})
    return Response(sent.content, sent.status_code, media_type=sent.headers.get("content-type"))


if __name__ == "__main__":
    host, ingest_port = os.getenv("HOST", "127.0.0.1"), int(os.getenv("INGEST_PORT", "4318"))
    serve_ingest = lambda: uvicorn.run(ingest, host=host, port=ingest_port)  # noqa: E731
    threading.Thread(target=serve_ingest, daemon=True).start()  # its own port, beside the API
    uvicorn.run(app, host=host, port=int(os.getenv("PORT", "8000")))
