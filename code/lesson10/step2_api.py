"""Lesson 10, step 2: runs and decisions as rows, and a worker takes each run on (STEP=2)."""

import json
import os
import secrets
import threading
import time
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.types import Command
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from lesson10.agent import build_agent, run_python
from research_agent import BadEdit, DecisionIn, resume_value

settings = {"autocommit": True, "row_factory": dict_row}  # as step 1's checkpointer needs them
pool = ConnectionPool(os.environ["DATABASE_URL"], kwargs=settings, open=False)
agent = build_agent(PostgresSaver(pool))
TABLES = """
CREATE TABLE IF NOT EXISTS runs (id text PRIMARY KEY, query text, state text NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (run_id text, call_id text, decision jsonb,
                                      PRIMARY KEY (run_id, call_id));
"""
DECIDED = "SELECT decision FROM decisions WHERE run_id = %s AND call_id = %s"
working: set[str] = set()  # the runs this process's threads are taking on
router = APIRouter()  # the API's routes, declared below


def sql(query: str, *params) -> list[dict]:
    with pool.connection() as connection:
        cursor = connection.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


def go_on(run_id: str) -> None:
    """Take the run on from its last checkpoint: to its end, or to its next stop for a person."""
    config = {"configurable": {"thread_id": run_id}}
    saved, inputs = agent.get_state(config), None  # None: the step a crash cut, again
    if not saved.values:  # a new run: its question
        query = sql("SELECT query FROM runs WHERE id = %s", run_id)[0]["query"]
        inputs = {"messages": [HumanMessage(query)]}
    elif saved.interrupts:  # stopped for a person, who has decided since
        pause = saved.interrupts[0]
        decided = sql(DECIDED, run_id, pause.value["tool_call_id"])[0]["decision"]
        inputs = Command(resume={pause.id: decided})
    stopped = "__interrupt__" in agent.invoke(inputs, config)
    state = "waiting_for_approval" if stopped else "done"
    sql("UPDATE runs SET state = %s WHERE id = %s", state, run_id)
    working.discard(run_id)


def worker() -> None:
    """Twice a second: a thread for each run that needs one (new, decided, or cut by a crash)."""
    while True:
        for run in sql("SELECT id FROM runs WHERE state = 'running'"):
            if run["id"] not in working:
                working.add(run["id"])
                threading.Thread(target=go_on, args=(run["id"],), daemon=True).start()
        time.sleep(0.5)


@asynccontextmanager
async def lifespan(app: FastAPI):
    pool.open(wait=True)
    agent.checkpointer.setup()  # LangGraph's tables
    sql(TABLES)  # ours
    threading.Thread(target=worker, daemon=True).start()
    yield


def found_run(run_id: str) -> dict:
    if not (runs := sql("SELECT * FROM runs WHERE id = %s", run_id)):
        raise HTTPException(404, "no such run")
    return runs[0]


@router.post("/v1/runs", status_code=202)
def create_run(query: Annotated[str, Body(embed=True, min_length=1)]) -> dict:
    run_id = secrets.token_hex(16)
    sql("INSERT INTO runs VALUES (%s, %s, 'running')", run_id, query)
    return {"run_id": run_id}


@router.get("/v1/runs/{run_id}")
def run_state(run: Annotated[dict, Depends(found_run)]) -> dict:
    saved = agent.get_state({"configurable": {"thread_id": run["id"]}})
    pending = answer = None
    if run["state"] == "waiting_for_approval":  # stopped, until someone decides
        call = saved.interrupts[0].value
        pending = {"call_id": call["tool_call_id"], "tool": call["name"], "args": call["args"]}
    elif run["state"] == "done":
        answer = saved.values["messages"][-1].text.strip()
    return {"run_id": run["id"], "state": run["state"], "pending": pending, "answer": answer}


@router.post("/v1/runs/{run_id}/decisions", status_code=202)
def decide(body: DecisionIn, run: Annotated[dict, Depends(found_run)]) -> dict:
    pending = run_state(run)["pending"]
    if pending is None or pending["call_id"] != body.call_id:
        raise HTTPException(409, "that call is not waiting for a decision")
    try:  # the decision in the middleware's shape; an edit checked against the tool's arguments
        decision = resume_value(body, "run_python", run_python)
    except BadEdit as exc:
        raise HTTPException(422, exc.errors) from None
    query = "INSERT INTO decisions VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
    if not sql(query, run["id"], body.call_id, json.dumps(decision)):
        raise HTTPException(409, "that call has been decided")  # the primary key says so
    sql("UPDATE runs SET state = 'running' WHERE id = %s", run["id"])  # a worker's again
    return {"run_id": run["id"], "call_id": body.call_id, "decision": body.decision}


app = FastAPI(title="Durable runs, step 2", lifespan=lifespan, routes=router.routes)

if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
