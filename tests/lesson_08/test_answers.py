"""The notes server's answer, validated once (lesson08.transport.checked_once): the same answer
the SDK sends for a returned model, checked against the tool's return model, and not checked a
second time with jsonschema (which validates the schema itself at every call). No process: the
servers are the SDK's FastMCP in memory."""

import asyncio
import sys

import jsonschema
import mcp.server.lowlevel.server as lowlevel
from fastmcp.tools.base import ToolResult
from mcp.server.fastmcp import FastMCP
from mcp.shared.memory import create_connected_server_and_client_session
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from lesson08.call_limits import validated_once
from lesson08.transport import checked_once
from research_agent import validate_answers_once


class Answer(BaseModel):
    text: str
    count: int


def server(answer) -> FastMCP:
    app = FastMCP("answers")

    @app.tool()
    async def ask() -> Answer:
        return answer()

    return app


async def call(app: FastMCP):
    async with create_connected_server_and_client_session(app._mcp_server) as session:
        return await session.call_tool("ask", {})


def counted_validations(monkeypatch) -> list:
    """The server's jsonschema validations (the client's own, of the answer, are not counted)."""
    calls = []
    real = jsonschema.validate

    def validate(*args, **kwargs):
        if sys._getframe(1).f_globals["__name__"] == lowlevel.__name__:
            calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lowlevel.jsonschema, "validate", validate)
    return calls


def test_the_answer_is_the_one_the_sdk_sends_for_the_model_without_the_second_check(monkeypatch):
    validations = counted_validations(monkeypatch)
    plain = asyncio.run(call(server(lambda: Answer(text="hi", count=2))))
    assert [v["instance"] for v in validations] == [{"text": "hi", "count": 2}]  # the SDK's way
    once = asyncio.run(call(server(lambda: checked_once(Answer(text="hi", count=2)))))
    assert len(validations) == 1  # checked by the model only
    assert once.model_dump() == plain.model_dump()
    assert once.structuredContent == {"text": "hi", "count": 2}


def test_an_answer_that_does_not_match_the_return_model_is_still_refused():
    wrong = CallToolResult(
        content=[TextContent(type="text", text="{}")], structuredContent={"text": "hi"}
    )
    result = asyncio.run(call(server(lambda: wrong)))
    assert result.isError and "count" in result.content[0].text


def test_a_kept_session_checks_each_schema_once_and_still_refuses_a_wrong_answer(monkeypatch):
    """research_agent.validate_answers_once, which the agent's and the gateway's sessions use: the
    schema is checked once per listing, every answer against it."""
    checks = []
    real = jsonschema.Draft202012Validator.check_schema
    monkeypatch.setattr(
        jsonschema.Draft202012Validator,
        "check_schema",
        lambda schema, **kw: checks.append(schema) or real(schema, **kw),
    )

    async def run():
        app = server(lambda: checked_once(Answer(text="hi", count=2)))
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


def test_the_gateway_passes_on_what_its_client_checked_without_a_second_check(monkeypatch):
    """A proxied answer with structured content goes out as a CallToolResult, which the SDK's
    server sends as it is (its client checked it against the tool's schema on arrival)."""
    validations = counted_validations(monkeypatch)
    upstream = ToolResult(
        content=[TextContent(type="text", text="hi")], structured_content={"text": "hi", "count": 2}
    )
    sent = validated_once(upstream).to_mcp_result()
    assert isinstance(sent, CallToolResult)
    assert sent.structuredContent == {"text": "hi", "count": 2} and sent.content[0].text == "hi"

    async def through_a_server():
        app = server(lambda: sent)  # what the gateway's server hands the SDK
        return await call(app)

    answer = asyncio.run(through_a_server())
    assert answer.structuredContent == {"text": "hi", "count": 2} and validations == []
