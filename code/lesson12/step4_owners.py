"""Lesson 12, step 4: each caller has a bearer token, and sees and continues only its own tasks.

Run it:  make lesson-12 STEP=4   (needs Docker and DATABASE_URL, as step 3)
"""

import os
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from a2a.helpers import (
    get_data_parts,
    get_message_text,
    new_data_part,
    new_task_from_user_message,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    add_a2a_routes_to_fastapi,
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import DatabaseTaskStore, TaskUpdater
from a2a.utils.errors import UnsupportedOperationError
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.types import Command
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import create_async_engine

from lesson12.agent import answer_parts, build_agent, run_python
from lesson12.callers import Callers, load_callers
from lesson12.card import BINDINGS, make_card
from research_agent import (
    BadEdit,
    DecisionIn,
    error_body,
    resume_value,
    token_hash,
)

HOST, PORT = os.getenv("HOST", "127.0.0.1"), int(os.getenv("PORT", "8000"))
DATABASE_URL = os.environ["DATABASE_URL"]
agent = None  # built at start-up (below): its checkpointer needs the event loop
# The SDK's task store, through SQLAlchemy (its asyncpg driver): the tasks, their status, history
# and artifacts.
tasks = DatabaseTaskStore(create_async_engine(DATABASE_URL.replace("://", "+asyncpg://", 1)))


class ResearchExecutor(AgentExecutor):
    """Runs the agent for a task: the SDK hands it the request and a queue for the task's events."""

    async def execute(self, request: RequestContext, event_queue: EventQueue) -> None:
        task = request.current_task or new_task_from_user_message(request.message)
        if request.current_task is None:
            await event_queue.enqueue_event(task)  # submitted: the client has the task's id now
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        config = {"configurable": {"thread_id": task.id}}
        saved = await agent.aget_state(config)
        if not saved.interrupts:  # a new task: its question
            inputs = {"messages": [HumanMessage(get_message_text(request.message))]}
        else:  # it waits for a person: this message is the decision (lesson 10's, as data)
            pause = saved.interrupts[0]
            try:
                decision = DecisionIn.model_validate(get_data_parts(request.message.parts)[0])
                if decision.call_id != pause.value["tool_call_id"]:
                    raise ValueError(f"the call waiting is {pause.value['tool_call_id']}")
                resume = resume_value(decision, "run_python", run_python)  # checks an edit
            except (IndexError, ValueError, ValidationError, BadEdit) as exc:
                return await self.ask(updater, pause.value, f"not a decision: {exc}")
            if decision.decision == "reject":  # the task ends, rejected; nothing runs
                said = decision.message or "the call was rejected"
                return await updater.reject(updater.new_agent_message([new_text_part(said)]))
            inputs = Command(resume={pause.id: resume})
        await updater.start_work()
        state = await agent.ainvoke(inputs, config)
        if "__interrupt__" in state:  # stopped before run_python: the caller decides
            return await self.ask(updater, state["__interrupt__"][0].value, "approve this call?")
        await updater.add_artifact(answer_parts(state["messages"]), name="answer")
        await updater.complete()

    async def ask(self, updater: TaskUpdater, call: dict, text: str) -> None:
        """input-required, with the call as data: its id, the tool and the arguments."""
        pending = {"call_id": call["tool_call_id"], "tool": call["name"], "args": call["args"]}
        parts = [new_text_part(text), new_data_part(pending)]
        await updater.requires_input(updater.new_agent_message(parts))

    async def cancel(self, request: RequestContext, event_queue: EventQueue) -> None:
        raise UnsupportedOperationError(message="this agent's tasks cannot be cancelled")


CARD = make_card(f"http://{HOST}:{PORT}", bearer=True)
# The callers' tokens, hashed: a file of lines "name token" (make lesson-12 writes it, not in git).
CALLERS = load_callers(Path(os.getenv("A2A_CALLERS_FILE", "code/lesson12/secrets/callers")))
handler = DefaultRequestHandler(ResearchExecutor(), tasks, CARD)


@asynccontextmanager
async def lifespan(app: FastAPI):
    global agent
    # Lesson 10's PostgresSaver in its async form (the SDK is async): the agent's checkpoints.
    async with AsyncPostgresSaver.from_conn_string(DATABASE_URL) as checkpointer:
        await checkpointer.setup()  # LangGraph's tables, once
        await tasks.initialize()  # the SDK's table
        agent = build_agent(checkpointer)  # a task's id names its thread of checkpoints
        yield


app = FastAPI(title="The research agent over A2A, step 4", lifespan=lifespan)
add_a2a_routes_to_fastapi(
    app,
    agent_card_routes=create_agent_card_routes(CARD),  # /.well-known/agent-card.json
    jsonrpc_routes=create_jsonrpc_routes(
        handler, rpc_url=BINDINGS["JSONRPC"], context_builder=Callers()
    ),
    rest_routes=create_rest_routes(
        handler, context_builder=Callers(), path_prefix=BINDINGS["HTTP+JSON"]
    ),
)


@app.middleware("http")
async def who_calls(request: Request, call_next):
    """Everything but the card needs a token we issued: a 401 in the course's error shape."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    request.state.caller = CALLERS.get(token_hash(token)) if scheme.lower() == "bearer" else None
    if request.state.caller or request.url.path == "/.well-known/agent-card.json":
        return await call_next(request)
    body = error_body("unauthorized", "send a bearer token that this agent issued")
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})


if __name__ == "__main__":
    uvicorn.run(app, host=HOST, port=PORT)
