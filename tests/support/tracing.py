"""Tracing off again after a test turned it on in this process (lessons 09 and 11)."""

from opentelemetry import trace
from opentelemetry.util._once import Once


def reset_tracing() -> None:
    """Forget the process's tracer provider and undo the library instrumentations (what
    OpenTelemetry's own test utilities do), so the next test starts with tracing off."""
    from opentelemetry.instrumentation.httpx import (
        HTTPX2ClientInstrumentor,
        HTTPXClientInstrumentor,
    )
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    from research_agent.tracing.mcp_tracing import MCPClientInstrumentor

    instrumentors = (
        HTTPXClientInstrumentor(),
        HTTPX2ClientInstrumentor(),
        RedisInstrumentor(),
        MCPClientInstrumentor(),
    )
    for instrumentor in instrumentors:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None
