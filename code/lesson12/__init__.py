"""Lesson 12: the research agent as an A2A server, its tasks durable and replicated, and a client
agent that delegates to it (docs/12-agents-over-a2a.md)."""

import os

# The A2A SDK wraps its handlers in OpenTelemetry spans, about 80 a message, whenever OpenTelemetry
# is installed (it is, for lesson 09). Lesson 12 exports no traces, so they would be made and
# dropped for nothing. The SDK reads this once, when it is imported: set it to true to trace it.
os.environ.setdefault("OTEL_INSTRUMENTATION_A2A_SDK_ENABLED", "false")
