"""Lesson 10, step 1: a run stops for a person's decision, then resumes (make lesson-10 STEP=1)."""

import json

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command

from lesson10.agent import build_agent

QUESTION = "What is 2**100?"


def ask(call: dict) -> dict:
    """The person: approve the call, or reject it."""
    print(f"The agent wants to call {call['name']} {json.dumps(call['args'])}")
    if input("Approve? [y/N] ").strip().lower() == "y":
        return {"type": "approve"}
    return {"type": "reject", "message": "the person said no"}


def main() -> None:
    agent = build_agent(InMemorySaver())  # checkpoints in this process's memory
    config = {"configurable": {"thread_id": "run-1"}}  # the thread: this run's checkpoints
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]}, config)
    while "__interrupt__" in state:  # stopped before a call, the checkpoint saved
        pause = state["__interrupt__"][0]
        state = agent.invoke(Command(resume={pause.id: ask(pause.value)}), config)
    print(state["messages"][-1].text.strip())


if __name__ == "__main__":
    main()
