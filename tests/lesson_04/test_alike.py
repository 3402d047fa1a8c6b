"""Lesson 04's last step and the research agent run the doc's programs alike.

Step 4 (code/lesson04/step4_api.py) is a small copy of the research agent's sandbox. The research
agent's `run_python` tool is built here exactly as the research agent builds it
(`SANDBOX_ENABLED=true`: research_agent/sandbox/python_tool.py's `sandbox_tools`, with its runner,
queue, watchdog and seccomp profile). Both get the programs docs/04-sandboxed-tools.md runs, and
must print the same stdout and stderr and end the same way: the exit code, a timeout, an OOM kill, a
flood cut at its cap, a refused network. The offline model, given either tool, must answer the doc's
questions alike, and the step must set the research agent's limits. The tests marked `container` run
real sandboxes (`make sandbox-test`)."""

import ast
import asyncio
import contextlib
import json

import pytest
from langchain.agents import create_agent

from chat_model import OfflineToolCallingModel
from research_agent.sandbox.python_tool import sandbox_tools
from support.lessons import ROOT, import_lesson
from tests.support.agent import make_settings

LAST_STEP = "code/lesson04/step4_api.py"


def constants(step: str) -> dict:
    """The step's top-level constants (its settings and limits): each assignment whose value needs
    no name to compute, without running the step."""
    found = {}
    for node in ast.parse((ROOT / step).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = compile(ast.Expression(node.value), step, "eval")
            with contextlib.suppress(NameError):  # not a constant: the client, threads, the agent
                found[node.targets[0].id] = eval(value, {"__builtins__": {}})
    return found


# What the doc runs: step 1's programs (section 1; step 4's curl runs two of them) and step 2's
# questions (section 2; step 4's curl asks the first).
PROGRAMS = constants("code/lesson04/step1_sandbox.py")["PROGRAMS"]
QUESTIONS = constants("code/lesson04/step2_tool.py")["QUESTIONS"]
# How a run ended, and what it printed; the research agent also times it (duration_ms).
COMPARED = ["stdout", "stderr", "exit_code", "timed_out", "oom_killed", "truncated"]


def test_the_last_step_sets_the_research_agents_limits():
    config = make_settings(SANDBOX_ENABLED=True).sandbox
    step = constants(LAST_STEP)
    assert step["IMAGE"] == config.image
    assert step["TIMEOUT_SECONDS"] == config.timeout_seconds
    assert step["MAX_OUTPUT_BYTES"] == config.max_output_bytes
    assert step["MAX_CONCURRENT"] == config.max_concurrent
    restrictions = step["RESTRICTIONS"]
    assert restrictions["mem_limit"] == restrictions["memswap_limit"] == config.memory
    assert restrictions["nano_cpus"] == int(config.cpus * 1e9)
    assert restrictions["pids_limit"] == config.pids
    assert restrictions["tmpfs"] == {"/tmp": f"rw,noexec,nosuid,nodev,size={config.tmp_size}"}
    assert restrictions["network_mode"] == "none" and config.egress == "none"


def test_the_programs_and_questions_are_the_docs():
    doc = (ROOT / "docs" / "04-sandboxed-tools.md").read_text(encoding="utf-8")
    assert len(PROGRAMS) == 8 and all(program in doc for program in PROGRAMS)
    assert len(QUESTIONS) == 2 and all(question in doc for question in QUESTIONS)


@pytest.fixture(scope="module")
def step():
    return import_lesson(LAST_STEP)


@pytest.fixture(scope="module")
def research_agent_tool():
    [tool] = sandbox_tools(make_settings(SANDBOX_ENABLED=True).sandbox, request_id=lambda: "alike")
    return tool


def ran(tool, code: str) -> dict:
    """What the agent reads back from `tool` for `code`: the run's result, as the model sees it."""
    result = json.loads(asyncio.run(tool.ainvoke({"code": code})))
    return {field: result[field] for field in COMPARED}


@pytest.mark.container
@pytest.mark.parametrize("code", PROGRAMS)
def test_the_last_step_runs_each_program_as_the_research_agent_does(
    step, research_agent_tool, code
):
    assert ran(step.run_python, code) == ran(research_agent_tool, code)


def answer(agent, question: str) -> str:
    state = asyncio.run(agent.ainvoke({"messages": [("user", question)]}))
    return state["messages"][-1].text.strip()


@pytest.mark.container
@pytest.mark.parametrize("question", QUESTIONS)
def test_the_agent_answers_alike_with_either_tool(step, research_agent_tool, question):
    model = OfflineToolCallingModel(token_delay_ms=0)
    research_agent = create_agent(model, [research_agent_tool], system_prompt=step.SYSTEM_PROMPT)
    assert answer(step.agent, question) == answer(research_agent, question)
