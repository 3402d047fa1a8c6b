"""The research agent with MCP_GATEWAY_URL: its search tool comes over MCP, through the gateway
(langchain-mcp-adapters), and the offline model still calls it and answers from it."""

import asyncio

import pytest

from research_agent.tools import build_agent
from research_agent.web.errors import UpstreamError
from support.mcp_servers import gateway
from tests.support.agent import make_settings
from tests.support.mcp_clients import log_lines

from .conftest import AGENT_TOKEN, agent_on_a_port

pytestmark = pytest.mark.xdist_group("lesson08")


def test_the_offline_agent_searches_over_mcp_and_answers_from_it(gw):
    settings = make_settings(MCP_GATEWAY_URL=gw.url + "/mcp", MCP_GATEWAY_TOKEN=AGENT_TOKEN)
    agent = build_agent(settings)
    assert agent.tool.name == "search_notes"
    result = asyncio.run(agent.research("Why use a multi-stage Docker build?"))
    assert [s["tool"] for s in result["steps"]] == ["search_notes"]
    assert result["sources"][0]["url"].startswith("notes/multi-stage-builds.md")
    assert "[1]" in result["response"]
    calls = [r for r in log_lines(gw, "tool_call") if r["client"] == "agent"]
    assert calls and calls[-1]["outcome"] == "ok"


def test_the_agent_keeps_one_session_across_a_gateway_restart(notes, tmp_path, opened_sessions):
    """The gateway keeps no session (the agent's handshake-era client is answered statelessly),
    so a restarted gateway has nothing to forget: the agent's kept session goes on with the new
    process, without opening another one."""
    opened, (agent, port, catalog, question) = opened_sessions, agent_on_a_port(notes)

    async def across_restart() -> list[dict]:
        results = []
        for work, calls in ((tmp_path / "a", 3), (tmp_path / "b", 2)):
            work.mkdir()
            with gateway(catalog, work, port=port) as server:
                results += [await agent.research(question) for _ in range(calls)]
                assert len(log_lines(server, "tool_call")) == calls
            if work.name == "a":
                assert len(opened) == 1  # three searches, one MCP session
        return results

    for result in asyncio.run(across_restart()):
        assert [s["status"] for s in result["steps"]] == ["success"], result["steps"]
    assert len(opened) == 1  # nothing was lost with the first gateway


def test_without_the_setting_the_agent_keeps_its_in_process_search():
    agent = build_agent(make_settings())
    assert agent.tool.name == "search_docs"


def test_a_gateway_that_is_down_is_the_agents_upstream_error():
    settings = make_settings(MCP_GATEWAY_URL="http://127.0.0.1:9/mcp")
    with pytest.raises(UpstreamError, match="MCP gateway is unavailable .ConnectError"):
        asyncio.run(build_agent(settings).research("What is a container?"))
