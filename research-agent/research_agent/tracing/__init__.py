"""Lesson 09's traces: OpenTelemetry's provider, FastAPI's server spans and the sandbox's spans
(otel.py), the agent's model and tool calls as GenAI spans (genai_spans.py), MCP calls joined
through `_meta` (mcp_tracing.py)."""
