"""Lesson 07's events in a trace (lesson 09): each delivery is a `process <topic>` span whose
parent is the `traceparent` the event's envelope carries (lesson07.contract.envelope puts it
there), so a question is one trace from the gateway through triage and a specialist to progress.
A redelivered message is a second span in the same trace, its delivery count an attribute.

Tracing is set up by the research agent's research_agent/tracing/otel.py, from the same OTEL_*
variables: without OTEL_EXPORTER_OTLP_ENDPOINT nothing is set up, and these spans are the API's
no-ops.
"""

import json
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from research_agent import FASTAPI_TELEMETRY, TracingSettings, configure_tracing, instrument, tracer


def configure(service: str):
    """Traces for one of lesson 07's services, named lesson07-<service> unless OTEL_SERVICE_NAME."""
    return configure_tracing(TracingSettings(), service_name=f"lesson07-{service}")


__all__ = ["FASTAPI_TELEMETRY"]  # FastAPI(telemetry=...): the gateway's server span per request


def instrument_gateway(app) -> None:
    """The gateway: tracing set up, so that FastAPI's server span per request (FASTAPI_TELEMETRY)
    starts, and the envelope then carries that span's context; HTTPX and Redis instrumented."""
    settings = TracingSettings()
    configure_tracing(settings, service_name="lesson07-gateway")
    instrument(app, settings)


def trace_context() -> dict[str, str]:
    """The current span's `traceparent` (and `tracestate`), as the envelope's extension attributes
    (CloudEvents' distributed-tracing extension): the consumer's span joins it. Nothing while
    tracing is off."""
    context: dict[str, str] = {}
    propagate.inject(context)
    return {k: v for k, v in context.items() if k in ("traceparent", "tracestate")}


def parent_context(fields: dict):
    """The trace context in a stream entry's envelope, or an empty one (the span starts a trace)."""
    try:
        event = json.loads(fields["data"])
        carrier = {
            k: event[k] for k in ("traceparent", "tracestate") if isinstance(event.get(k), str)
        }
    except Exception:  # noqa: BLE001 - a malformed entry has no context; parse() rejects it
        carrier = {}
    return propagate.extract(carrier)


@contextmanager
def delivery_span(
    topic: str, group: str, consumer: str, message_id: str, fields: dict, delivery: int
):
    """The span of one delivery of one message, under the trace of the event it carries."""
    attributes = {
        "messaging.system": "redis",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "messaging.consumer.group.name": group,
        "messaging.message.id": message_id,
        "messaging.client.id": consumer,
        "lesson07.delivery": delivery,
    }
    with tracer("lesson07").start_as_current_span(
        f"process {topic}",
        context=parent_context(fields),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
    ) as span:
        yield span


def record_outcome(outcome: str) -> None:
    """The delivery's outcome (done, duplicate, deadletter, error: ...) on its span."""
    if outcome == "delivered":
        return
    span = trace.get_current_span()
    span.set_attribute("lesson07.outcome", outcome[:200])
    if outcome.startswith(("error", "deadletter")):
        span.set_status(Status(StatusCode.ERROR, outcome[:200]))
