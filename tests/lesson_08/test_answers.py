"""The agent's MCP session checks each answer once per schema (research_agent.
validate_answers_once): the agent's client is the SDK's 1.x `ClientSession` (through
langchain-mcp-adapters), whose own check builds a validator from the tool's schema at every call.
(The SDK's 2.x client, which lesson 08's gateway and servers use, keeps its validators itself.) No
process: the server is the SDK's FastMCP in memory."""

import asyncio

import jsonschema
from mcp.server.fastmcp import FastMCP
from mcp.shared.memory import create_connected_server_and_client_session
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from research_agent.mcp.answers import validate_answers_once


class Answer(BaseModel):
    text: str
    count: int


def as_result(answer: BaseModel) -> CallToolResult:
    """The answer as the server sends it: checked by the server against its model, not by a
    jsonschema validator whose schema check would be counted with the client's below."""
    text = answer.model_dump_json()
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structuredContent=answer.model_dump()
    )


def server(answer) -> FastMCP:
    app = FastMCP("answers")

    @app.tool()
    async def ask() -> Answer:
        return answer()

    return app


def test_a_kept_session_checks_each_schema_once_and_still_refuses_a_wrong_answer(monkeypatch):
    """The schema is checked once per listing, every answer against it."""
    checks = []
    real = jsonschema.Draft202012Validator.check_schema
    monkeypatch.setattr(
        jsonschema.Draft202012Validator,
        "check_schema",
        lambda schema, **kw: checks.append(schema) or real(schema, **kw),
    )

    async def run():
        app = server(lambda: as_result(Answer(text="hi", count=2)))
        async with create_connected_server_and_client_session(app._mcp_server) as session:
            validate_answers_once(session)
            await session.list_tools()
            answers = [(await session.call_tool("ask", {})).structuredContent for _ in range(3)]
            checked_before = len(checks)
            # The schema the server declares now asks for another type: the same answer fails.
            stricter = dict(session._tool_output_schemas["ask"])
            stricter["properties"] = {**stricter["properties"], "count": {"type": "string"}}
            session._tool_output_schemas["ask"] = stricter
            try:
                await session.call_tool("ask", {})
            except RuntimeError as exc:
                return answers, checked_before, str(exc)
            return answers, checked_before, None

    answers, checked_before, error = asyncio.run(run())
    assert answers == [{"text": "hi", "count": 2}] * 3
    assert checked_before == 1  # three answers, one check of the schema
    assert error is not None and "Invalid structured content returned by tool ask" in error
