"""Research agent: a LangChain tool-calling agent served by FastAPI."""
