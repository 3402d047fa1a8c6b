"""Lesson 12: the research agent as an A2A server, its tasks durable and replicated, and a client
agent that delegates to it (docs/12-agents-over-a2a.md)."""
