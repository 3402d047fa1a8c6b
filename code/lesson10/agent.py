"""Lesson 10's agent: lesson 04's run_python, and a person approves each call before it runs.

Each step of the lesson builds it with a checkpointer of its own (memory, then PostgreSQL).
"""

import json
import os

from langchain.agents import create_agent
from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.tools import BaseTool, tool

from chat_model import OfflineToolCallingModel, make_chat_model
from research_agent import SandboxConfig, SandboxRunner

SYSTEM_PROMPT = """You answer questions. For anything that needs computing, call run_python with a
complete program that prints the result, then answer from its output. If the run failed or a
person rejected it, say so."""


# The package's runner: lesson 04's steps grown into one class (its Going further), a throwaway
# container per call, no network, limits on all; `.run(code)` gives step 4's fields. `settable`:
# what the environment may set (SANDBOX_IMAGE, _RUNTIME, _TIMEOUT_SECONDS, _OWNER: the label
# `make lesson-NN-down` removes by).
class Sandbox(SandboxConfig):
    settable = frozenset({"image", "runtime", "timeout_seconds", "owner"})
    owner: str = "lesson10"


runner = SandboxRunner(Sandbox())


@tool
def run_python(code: str) -> str:
    """Run a Python program in a sandbox and return its stdout, stderr and exit code."""
    return json.dumps(runner.run(code).as_dict())


def build_agent(checkpointer, python_tool: BaseTool = run_python):
    """The agent of lesson 04, which stops before each run_python call for a person's decision."""
    model = make_chat_model(os.getenv("OPENAI_API_KEY"), offline_model=OfflineToolCallingModel)
    # An interrupt before each call: the run stops, its checkpoint saved, until a person answers.
    ask_first = {"run_python": {"allowed_decisions": ["approve", "edit", "reject"]}}
    approvals = HumanInTheLoopMiddleware(interrupt_on=ask_first, interrupt_mode="per_call")
    return create_agent(
        model,
        [python_tool],
        system_prompt=SYSTEM_PROMPT,
        middleware=[approvals],
        checkpointer=checkpointer,
    )
