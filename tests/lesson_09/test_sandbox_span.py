"""Lesson 04's sandbox in a trace: each run_python call is a `sandbox run` span under the tool's
`execute_tool run_python`, with the run's limits and outcome as attributes, never its code.
(The container suite, `make traces-test`, runs a real sandbox.) And what a tool calls nests under
its span: a model asked from inside a tool is a `chat` span under `execute_tool`."""

import asyncio

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.tools import tool
from opentelemetry.trace import SpanKind

import research_agent.tools
from research_agent.sandbox.python_tool import make_run_python_tool
from research_agent.sandbox.runner import RunResult, SandboxConfig
from research_agent.tools import build_agent
from research_agent.tracing.genai_spans import instrument_langchain
from research_agent.tracing.otel import TracedRunner
from tests.lesson_02.test_sandbox_tool import ScriptedModel
from tests.support.agent import make_settings

SECRET_CODE = "print('the code stays out of the trace')"


class FakeRunner:
    """A runner that reports a run killed for its memory, without Docker."""

    config = SandboxConfig(memory="64m", timeout_seconds=3.0)

    async def arun(self, code, request_id=None):
        await asyncio.sleep(0.01)
        return RunResult("", "Killed", 137, False, True, False, 12.5)


def research_with(tool, spans, monkeypatch) -> tuple:
    """One question to an agent whose only optional tool is `tool` (the model calls it once):
    every finished span, the agent's and the tool call's."""
    instrument_langchain()  # what create_app does when tracing is on
    monkeypatch.setattr(research_agent.tools, "optional_tools", lambda settings: [tool])
    agent = build_agent(make_settings(), model=ScriptedModel(code=SECRET_CODE))
    asyncio.run(agent.research("What is six times seven?"))
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == "invoke_agent research-agent"]
    (call,) = [s for s in finished if s.name == "execute_tool run_python"]
    return finished, root, call


def test_a_sandbox_run_is_a_span_under_its_tool_call(spans, monkeypatch):
    tool = make_run_python_tool(TracedRunner(FakeRunner()), lambda: "req-1")
    finished, root, call = research_with(tool, spans, monkeypatch)
    (sandbox,) = [s for s in finished if s.name == "sandbox run"]
    assert sandbox.parent.span_id == call.context.span_id
    assert call.parent.span_id == root.context.span_id
    assert sandbox.kind == SpanKind.INTERNAL
    assert dict(sandbox.attributes) == {
        "sandbox.image": "agent-sandbox:python",
        "sandbox.timeout_seconds": 3.0,
        "sandbox.memory": "64m",
        "sandbox.exit_code": 137,
        "sandbox.timed_out": False,
        "sandbox.oom_killed": True,
        "sandbox.output_truncated": False,
        "sandbox.duration_ms": 12.5,
    }
    assert all(SECRET_CODE not in str(dict(s.attributes)) for s in finished)


def test_a_model_a_tool_asks_is_a_chat_span_under_the_tool_call(spans, monkeypatch):
    """A synchronous tool runs in a worker thread, its model call in that thread too."""

    @tool("run_python")
    def ask_another_model(code: str) -> str:
        """Answers with what another model says about the code."""
        return FakeListChatModel(responses=["42"]).invoke(code).text

    finished, root, call = research_with(ask_another_model, spans, monkeypatch)
    (inner,) = [s for s in finished if s.parent and s.parent.span_id == call.context.span_id]
    assert inner.name.startswith("chat ")
    assert call.parent.span_id == root.context.span_id
    assert len([s for s in finished if s.name.startswith("chat ")]) == 3  # two the agent's


def test_without_tracing_the_tool_still_runs(monkeypatch):
    tool = make_run_python_tool(TracedRunner(FakeRunner()), lambda: "req-1")
    content, artifact = asyncio.run(tool.coroutine(code="print(1)"))
    assert artifact["result"]["oom_killed"] is True
