"""Lesson 10, step 1: a run stops for a person, kept in PostgreSQL, so it outlives its process."""

import json
import os

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.types import Command
from psycopg import connect
from psycopg.rows import dict_row

from lesson10.agent import build_agent

QUESTION = "What is 2**100?"


def ask(call: dict) -> dict:
    """The person: approve the call, or reject it."""
    print(f"The agent wants to call {call['name']} {json.dumps(call['args'])}")
    if input("Approve? [y/N] ").strip().lower() == "y":
        return {"type": "approve"}
    return {"type": "reject", "message": "the person said no"}


def main() -> None:
    # The connection the checkpointer needs: autocommit (each write lands at once), rows as dicts.
    connection = connect(os.environ["DATABASE_URL"], autocommit=True, row_factory=dict_row)
    checkpointer = PostgresSaver(connection)  # checkpoints in PostgreSQL
    checkpointer.setup()  # creates LangGraph's tables, the first time
    agent = build_agent(checkpointer)
    thread = os.getenv("THREAD_ID", "run-1")
    config = {"configurable": {"thread_id": thread}}  # the thread: this run's checkpoints
    saved = agent.get_state(config)  # the thread's last checkpoint, if it has one
    if saved.interrupts:  # a process stopped while this run waited: on from the checkpoint
        print(f"{thread} resumes from its checkpoint")
        state = {**saved.values, "__interrupt__": saved.interrupts}
    elif saved.values:  # the run has ended: the checkpoint holds its answer
        print(f"{thread} has ended; its checkpoint holds the answer")
        state = saved.values
    else:
        state = agent.invoke({"messages": [HumanMessage(QUESTION)]}, config)
    while "__interrupt__" in state:  # stopped before a call, the checkpoint saved
        pause = state["__interrupt__"][0]
        state = agent.invoke(Command(resume={pause.id: ask(pause.value)}), config)
    print(state["messages"][-1].text.strip())


if __name__ == "__main__":
    main()
