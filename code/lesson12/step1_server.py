"""Lesson 12, step 1: the research agent as an A2A server: a card, an executor, the SDK's routes.

Run it:  make lesson-12 STEP=1   (then: .venv/bin/python -m lesson12.client ask "What is A2A?")
"""

import os

import uvicorn
from a2a.helpers import get_message_text, new_task_from_user_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import (
    add_a2a_routes_to_fastapi,
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.utils.errors import UnsupportedOperationError
from fastapi import FastAPI
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver

from lesson12.agent import answer_parts, build_agent
from lesson12.card import BINDINGS, make_card

HOST, PORT = os.getenv("HOST", "127.0.0.1"), int(os.getenv("PORT", "8000"))
agent = build_agent(InMemorySaver())  # a task's id names its thread of checkpoints


class ResearchExecutor(AgentExecutor):
    """Runs the agent for a task: the SDK hands it the request and a queue for the task's events."""

    async def execute(self, request: RequestContext, event_queue: EventQueue) -> None:
        task = request.current_task or new_task_from_user_message(request.message)
        if request.current_task is None:
            await event_queue.enqueue_event(task)  # submitted: the client has the task's id now
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        config = {"configurable": {"thread_id": task.id}}
        question = HumanMessage(get_message_text(request.message))
        state = await agent.ainvoke({"messages": [question]}, config)
        await updater.add_artifact(answer_parts(state["messages"]), name="answer")
        await updater.complete()

    async def cancel(self, request: RequestContext, event_queue: EventQueue) -> None:
        raise UnsupportedOperationError(message="this agent's tasks cannot be cancelled")


CARD = make_card(f"http://{HOST}:{PORT}")
handler = DefaultRequestHandler(ResearchExecutor(), InMemoryTaskStore(), CARD)
app = FastAPI(title="The research agent over A2A, step 1")
add_a2a_routes_to_fastapi(
    app,
    agent_card_routes=create_agent_card_routes(CARD),  # /.well-known/agent-card.json
    jsonrpc_routes=create_jsonrpc_routes(handler, rpc_url=BINDINGS["JSONRPC"]),
    rest_routes=create_rest_routes(handler, path_prefix=BINDINGS["HTTP+JSON"]),
)

if __name__ == "__main__":
    uvicorn.run(app, host=HOST, port=PORT)
