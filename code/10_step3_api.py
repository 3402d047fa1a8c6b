"""Lesson 10, step 3: runs and decisions over HTTP, for the run's owner (make lesson-10 STEP=3)."""

import hashlib
import hmac
import json
import os
import secrets
import threading
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import Body, Depends, FastAPI, Header, HTTPException
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.types import Command
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from lesson10.agent import build_agent, run_python
from research_agent import BadEdit, DecisionIn, resume_value

# Connections as the checkpointer needs them, as in step 2: autocommit, rows as dicts.
settings = {"autocommit": True, "row_factory": dict_row}
pool = ConnectionPool(os.environ["DATABASE_URL"], kwargs=settings, open=False)
agent = build_agent(PostgresSaver(pool))
TABLES = """
CREATE TABLE IF NOT EXISTS runs (id text PRIMARY KEY, owner_hash text NOT NULL, query text);
CREATE TABLE IF NOT EXISTS decisions (run_id text, call_id text, decision jsonb,
                                      PRIMARY KEY (run_id, call_id));
"""
DECIDED = "SELECT decision FROM decisions WHERE run_id = %s AND call_id = %s"
working: dict[str, threading.Thread] = {}  # the thread that last took each run on


def sql(query: str, *params) -> list[dict]:
    with pool.connection() as connection:
        cursor = connection.execute(query, params or None)
        return cursor.fetchall() if cursor.description else []


def go_on(run_id: str) -> None:
    """Take the run on from its last checkpoint, in a thread: to its end or its next stop."""
    config = {"configurable": {"thread_id": run_id}}
    saved, inputs = agent.get_state(config), None  # None: the step a crash cut, again
    if not saved.values:  # a new run: its question
        query = sql("SELECT query FROM runs WHERE id = %s", run_id)[0]["query"]
        inputs = {"messages": [HumanMessage(query)]}
    elif saved.interrupts:  # stopped for a person: on with the decision, once there is one
        pause = saved.interrupts[0]
        decided = sql(DECIDED, run_id, pause.value["tool_call_id"])
        if not decided:
            return
        inputs = Command(resume={pause.id: decided[0]["decision"]})
    elif not saved.next:  # ended
        return
    working[run_id] = threading.Thread(target=agent.invoke, args=(inputs, config))
    working[run_id].start()


@asynccontextmanager
async def lifespan(app: FastAPI):
    pool.open(wait=True)
    agent.checkpointer.setup()  # LangGraph's tables
    sql(TABLES)  # ours
    for run in sql("SELECT id FROM runs"):  # what a stopped process left unfinished
        go_on(run["id"])
    yield
    pool.close()


app = FastAPI(title="Durable runs, step 3", lifespan=lifespan)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def owned_run(run_id: str, authorization: Annotated[str, Header()] = "") -> dict:
    runs = sql("SELECT * FROM runs WHERE id = %s", run_id)
    if not runs:
        raise HTTPException(404, "no such run")
    token = authorization.removeprefix("Bearer ")
    if not hmac.compare_digest(runs[0]["owner_hash"], token_hash(token)):  # in constant time
        raise HTTPException(403, "that is not this run's owner token")
    return runs[0]


@app.post("/v1/runs", status_code=202)
def create_run(query: Annotated[str, Body(embed=True, min_length=1)]) -> dict:
    run_id, token = secrets.token_hex(16), secrets.token_urlsafe(32)
    sql("INSERT INTO runs VALUES (%s, %s, %s)", run_id, token_hash(token), query)
    go_on(run_id)
    return {"run_id": run_id, "owner_token": token}


@app.get("/v1/runs/{run_id}")
def run_state(run: Annotated[dict, Depends(owned_run)]) -> dict:
    saved = agent.get_state({"configurable": {"thread_id": run["id"]}})
    busy = run["id"] in working and working[run["id"]].is_alive()  # its checkpoints change now
    state, pending, answer = "running", None, None
    if not busy and saved.interrupts:  # stopped, until someone decides
        call, state = saved.interrupts[0].value, "waiting_for_approval"
        pending = {"call_id": call["tool_call_id"], "tool": call["name"], "args": call["args"]}
    elif not busy and not saved.next:  # ended
        state, answer = "done", saved.values["messages"][-1].text.strip()
    return {"run_id": run["id"], "state": state, "pending": pending, "answer": answer}


@app.post("/v1/runs/{run_id}/decisions", status_code=202)
def decide(body: DecisionIn, run: Annotated[dict, Depends(owned_run)]) -> dict:
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
    go_on(run["id"])
    return {"run_id": run["id"], "call_id": body.call_id, "decision": body.decision}


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
