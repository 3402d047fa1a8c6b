"""The agent's search tool over MCP (lesson 08): the tools from a gateway (tools.py) and each
session's answer checks (answers.py)."""
