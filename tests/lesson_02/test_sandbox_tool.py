"""The research agent's run_python tool (SANDBOX_ENABLED): off by default; when on, a sandbox that
cannot run is an error the model reads, and the search middleware leaves the tool's answer alone.
The test marked `container` runs real code in a real sandbox (`make sandbox-test`)."""

import asyncio

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from research_agent.tools import build_agent, optional_tools
from tests.support.agent import make_settings


class ScriptedModel(BaseChatModel):
    """Calls run_python once when it is bound, then answers with the tools it saw and the output."""

    code: str = "print(6 * 7)"
    bound: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs) -> "ScriptedModel":
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self.model_copy(update={"bound": names})

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if "run_python" in self.bound and not results:
            call = {"name": "run_python", "args": {"code": self.code}, "id": "call_python"}
            message = AIMessage("", tool_calls=[call])
        else:
            seen = " ".join(f"[{m.status}] {m.text}" for m in results)
            message = AIMessage(f"tools: {','.join(self.bound)} | {seen}")
        return ChatResult(generations=[ChatGeneration(message=message)])


def research(**settings) -> str:
    agent = build_agent(make_settings(**settings), model=ScriptedModel())
    return asyncio.run(agent.research("What is six times seven?"))["response"]


def test_off_by_default_the_agent_has_only_its_search_tool():
    assert optional_tools(make_settings()) == []
    assert research().startswith("tools: search_docs |")


def test_without_docker_run_python_is_an_error_the_model_reads(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    response = research(SANDBOX_ENABLED=True)
    assert response.startswith("tools: search_docs,run_python |")
    assert "[error] Error: the Python sandbox is unavailable (Docker is not reachable" in response
    assert "the search failed" not in response  # the search middleware let run_python's answer be


def test_the_service_starts_and_answers_with_the_sandbox_on_but_no_docker(client_for, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with client_for(SANDBOX_ENABLED=True) as client:
        assert client.get("/health").status_code == 200
        response = client.post("/v1/research", json={"query": "What is a health check?"})
        assert response.status_code == 200, response.text


@pytest.mark.container
def test_run_python_runs_in_a_real_sandbox():
    response = research(SANDBOX_ENABLED=True)
    assert '[success] {"stdout": "42\\n", "stderr": "", "exit_code": 0' in response
