"""Traces: OpenTelemetry, configured only by the standard OTEL_* variables (lesson 09).

No OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_SDK_DISABLED=true): nothing is set up. No provider, no
exporter, no instrumentation; the OpenTelemetry API's no-op tracer answers the few spans the code
starts itself, and the cost is measured by `make bench-tracing`.

With an endpoint, the SDK reads the rest itself: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
(the resource), OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (sampling), OTEL_BSP_* (the batch
processor), OTEL_EXPORTER_OTLP_PROTOCOL ("http/protobuf", the default, or "grpc") and the
exporter's own headers, timeout and TLS variables. Then:

- FastAPI: a server span per request, joined to the caller's W3C `traceparent` header (FastAPI's
  own telemetry, FASTAPI_TELEMETRY below, which starts as soon as a provider is installed); a
  caller the edge did not trust is a link instead (TraceHeaders), and every answer names its
  trace in a `traceresponse` header;
- HTTPX, HTTPX2 and Redis, when installed: a client span per call (HTTPX2: the OpenAI SDK's calls
  to the model provider, with a `traceparent` header; Redis: the cache, quotas);
- MCP, when installed: each tool call carries the trace context in its `_meta`
  (research_agent/tracing/mcp_tracing.py), so lesson 08's gateway and tool servers join the trace;
- LangChain: the OpenTelemetry GenAI spans `invoke_agent {agent}`, `chat {model}` and
  `execute_tool {tool}`, from research_agent/tracing/genai_spans.py's GenAIHandler.

Prompt and answer text stay out of spans unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT
is true: a privacy choice, since a trace backend keeps what it is sent. Keys never go in.
"""

import importlib.util
import logging
import sys
import threading

from opentelemetry import trace
from prometheus_client import Counter
from starlette.datastructures import Headers, MutableHeaders

from ..settings import TracingSettings
from .genai_spans import instrument_langchain

logger = logging.getLogger(__name__)

# Paths whose requests make no span: probes and scrapes would bury the questions.
UNTRACED_PATHS = frozenset({"health", "ready", "metrics"})


def tracer(name: str = "research-agent") -> trace.Tracer:
    """The tracer for spans the app starts itself (a no-op one while tracing is off)."""
    return trace.get_tracer(name)


def tracing_on() -> bool:
    """True once an SDK provider is installed (by configure_tracing, or by a test). Does not
    import the SDK: while tracing is off it is never loaded."""
    sdk = sys.modules.get("opentelemetry.sdk.trace")
    return sdk is not None and isinstance(trace.get_tracer_provider(), sdk.TracerProvider)


# [start:configure]
def configure_tracing(settings: TracingSettings, service_name: str = "research-agent"):
    """Install a TracerProvider exporting over OTLP, once per process. Returns it, or None when
    no endpoint is set (nothing is installed then)."""
    if not settings.tracing_enabled:
        return None
    if tracing_on():  # already installed (a second app in this process, or a test's provider)
        return trace.get_tracer_provider()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; without either the
    # service is "unknown_service", replaced by this default. TracerProvider reads
    # OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (parentbased_always_on by default).
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)
    # Spans delivered and lost, counted in /metrics (CountedBatches below).
    provider.add_span_processor(counted_batches(otlp_exporter(settings.otlp_protocol)))
    trace.set_tracer_provider(provider)
    return provider


# [end:configure]


# --- When the trace backend does not answer ----------------------------------------------------

# [start:export_metrics]
SPANS_EXPORTED = Counter("trace_spans_exported_total", "Spans the trace backend accepted")
SPANS_DROPPED = Counter(
    "trace_spans_dropped_total",
    "Spans lost before the trace backend had them: export_failed (it did not answer or refused "
    "them), queue_full (more spans waiting than the batch processor keeps)",
    ["reason"],
)
# [end:export_metrics]
for _reason in ("export_failed", "queue_full"):
    SPANS_DROPPED.labels(_reason)  # both series from the start, at 0

# The SDK's own lines: each failed batch (and each retry) from the exporters, each span a full queue
# drops from the batch processor. Hundreds while the backend is down, and nothing to count.
_SDK_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.sdk._shared_internal",
)


def counted_batches(exporter):
    """A BatchSpanProcessor (OTEL_BSP_* from the environment) that counts the spans its full
    queue drops, exporting through `exporter` counted (CountedExporter)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    counted = CountedExporter(exporter)

    class CountedBatches(BatchSpanProcessor):
        def on_end(self, span) -> None:
            # The SDK drops the oldest span when its queue is full, with a warning and no count.
            # (Its queue is not public API: tests/lesson_09/test_tracing.py checks this reading.)
            batch = self._batch_processor
            if span.context.trace_flags.sampled and len(batch._queue) >= batch._max_queue_size:
                counted.dropped(1, "queue_full")
            super().on_end(span)

    return CountedBatches(counted)


class CountedExporter:
    """An exporter, counted: the spans it delivered and those lost go to /metrics
    (trace_spans_exported_total, trace_spans_dropped_total), and an outage is two log lines, one
    when the first span is lost (with the SDK's reason) and one when an export succeeds again (with
    how many were lost), in place of the SDK's line per batch, per retry and per dropped span."""

    def __init__(self, exporter):
        self.exporter = exporter
        self.failing = False
        self.lost = 0  # spans lost in this outage
        self.reason: str | None = None  # the SDK's last word on it
        self._exporting: int | None = None  # the thread inside export(), whose SDK lines fold here
        self._lock = threading.Lock()
        _SdkExportLines.install(self)

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult

        self._exporting = threading.get_ident()
        try:
            result = self.exporter.export(spans)
        except Exception as error:  # the processor would log it and go on: so do we, once
            self.reason, result = f"{type(error).__name__}: {error}", SpanExportResult.FAILURE
        finally:
            self._exporting = None
        if result is SpanExportResult.SUCCESS:
            SPANS_EXPORTED.inc(len(spans))
            self._recovered()
        else:
            self.dropped(len(spans), "export_failed")
        return result

    def dropped(self, count: int, reason: str) -> None:
        SPANS_DROPPED.labels(reason).inc(count)
        with self._lock:
            self.lost += count
            if self.failing:
                return
            self.failing = True
        logger.warning(
            "traces are being dropped: the trace backend does not take them",
            extra={"reason": self.reason or reason},
        )

    def _recovered(self) -> None:
        with self._lock:
            if not self.failing:
                return
            self.failing, lost, self.lost, self.reason = False, self.lost, 0, None
        logger.info("the trace backend takes traces again", extra={"spans_dropped": lost})

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _SdkExportLines(logging.Filter):
    """On the SDK's loggers: a line logged inside CountedExporter.export becomes its reason, and
    "Queue full" (counted by CountedBatches) is dropped; neither is printed. The rest passes."""

    installed: "_SdkExportLines | None" = None

    def __init__(self):
        super().__init__()
        self.exporter: CountedExporter | None = None

    @classmethod
    def install(cls, exporter: CountedExporter) -> None:
        """One filter per process, following the newest exporter (tests build several)."""
        if cls.installed is None:
            cls.installed = cls()
            for name in _SDK_LOGGERS:
                sdk_logger = logging.getLogger(name)
                sdk_logger.addFilter(cls.installed)
                # Seen whatever the root's level: a dropped span is counted even under ERROR.
                sdk_logger.setLevel(logging.WARNING)
        cls.installed.exporter = exporter

    def filter(self, record: logging.LogRecord) -> bool:
        exporter = self.exporter
        if exporter is None:
            return True
        if record.name == "opentelemetry.sdk._shared_internal":  # counted by CountedBatches
            return not str(record.msg).startswith("Queue full")
        if exporter._exporting == threading.get_ident():
            exporter.reason = record.getMessage()
            return False
        return True


def flush_tracing(timeout_millis: int = 2000) -> None:
    """Send the spans still in the batch (before a process exits without running atexit)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush(timeout_millis)


def otlp_exporter(protocol: str):
    """The exporter for OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL; it reads its endpoint from the
    environment (the HTTP one appends /v1/traces to OTEL_EXPORTER_OTLP_ENDPOINT)."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:  # http/json has no Python exporter in the SDK
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use 'http/protobuf' or 'grpc'")
    return OTLPSpanExporter()


def untraced(scope: dict) -> bool:
    """A probe or a scrape: /health, /ready, /metrics (and below)."""
    return scope.get("path", "").strip("/").split("/", 1)[0] in UNTRACED_PATHS


# [start:fastapi_telemetry]
# FastAPI(telemetry=FASTAPI_TELEMETRY): FastAPI's own server span per request, the caller's
# `traceparent` its parent, started only once a tracer provider is installed. No span per
# dependency, endpoint and serialization step (FastAPI's default), and no metrics or logs from it:
# Prometheus counts the requests (lesson 03), the JSON log says what failed.
FASTAPI_TELEMETRY = {
    "operation_spans": False,
    "metrics": False,
    "logs": False,
    "exclude": untraced,
}
# [end:fastapi_telemetry]


# A caller's `traceparent` makes its trace the parent of this request's spans: a stranger's, sent
# with a victim's trace id, would write into the victim's trace, and its flags `-00` would keep
# the request out of the trace store. The edge (research-agent/haproxy.cfg) trusts no caller by
# default: it renames the header to this one, and the request starts a trace of its own.
CALLER_TRACEPARENT = "x-caller-traceparent"


class TraceHeaders:
    """ASGI middleware inside FastAPI's server span (instrument adds it while tracing is on): the
    caller context the edge did not trust becomes a link on the span, named but not joined, and
    the answer's `traceresponse` header (W3C Trace Context Level 2) says which trace is this
    request's, so a caller can find it."""

    def __init__(self, app):
        from opentelemetry.instrumentation.propagators import FuncSetter, TraceResponsePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.app, self.caller = app, TraceContextTextMapPropagator()
        self.answer, self.setter = TraceResponsePropagator(), FuncSetter(MutableHeaders.append)

    async def __call__(self, scope, receive, send):
        span = trace.get_current_span()
        if scope["type"] != "http" or not span.get_span_context().is_valid:  # probes: no span
            return await self.app(scope, receive, send)
        caller = Headers(scope=scope).get(CALLER_TRACEPARENT)
        if caller:
            context = self.caller.extract({"traceparent": caller})
            linked = trace.get_current_span(context).get_span_context()
            if linked.is_valid:
                span.add_link(linked)

        async def send_with_trace(message):
            if message["type"] == "http.response.start":
                self.answer.inject(MutableHeaders(scope=message), setter=self.setter)
            await send(message)

        await self.app(scope, receive, send_with_trace)


def instrument(app, settings: TracingSettings) -> None:
    """Instrument the libraries the app uses, if tracing is on; otherwise do nothing. (The app's
    own server spans: FASTAPI_TELEMETRY, given to FastAPI() when the app is built.)"""
    if not tracing_on():
        return
    app.add_middleware(TraceHeaders)  # caller links, and `traceresponse` on every answer
    if importlib.util.find_spec("httpx"):
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

        if not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry:
            HTTPXClientInstrumentor().instrument()
    if importlib.util.find_spec("httpx2"):  # what the OpenAI SDK (3.x) sends with
        from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor

        if not HTTPX2ClientInstrumentor().is_instrumented_by_opentelemetry:
            HTTPX2ClientInstrumentor().instrument()
    if importlib.util.find_spec("redis"):
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        if not RedisInstrumentor().is_instrumented_by_opentelemetry:
            RedisInstrumentor().instrument()
    if importlib.util.find_spec("mcp"):  # MCP tool calls carry the trace context in `_meta`
        from .mcp_tracing import MCPClientInstrumentor

        MCPClientInstrumentor().instrument()
    instrument_langchain(settings.OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)


class TracedRunner:
    """Lesson 04's sandbox runner, each run a `sandbox run` span under the tool call: the limits
    it was given, then how it ended (never the code it ran)."""

    def __init__(self, runner):
        self.runner, self.config = runner, runner.config

    async def arun(self, code: str, **options):
        c = self.config
        limits = {
            "sandbox.image": c.image,
            "sandbox.timeout_seconds": c.timeout_seconds,
            "sandbox.memory": str(c.memory),
        }
        with tracer().start_as_current_span("sandbox run", attributes=limits) as span:
            result = await self.runner.arun(code, **options)
            span.set_attributes(
                {
                    "sandbox.exit_code": -1 if result.exit_code is None else result.exit_code,
                    "sandbox.timed_out": result.timed_out,
                    "sandbox.oom_killed": result.oom_killed,
                    "sandbox.output_truncated": result.truncated,
                    "sandbox.duration_ms": result.duration_ms,
                }
            )
        return result
