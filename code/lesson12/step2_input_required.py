"""Lesson 12, step 2: a task that needs a person: input-required, then the caller's decision.

Run it:  make lesson-12 STEP=2   (needs Docker: run_python runs in lesson 04's sandbox)
"""

import os

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
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.utils.errors import UnsupportedOperationError
from fastapi import FastAPI
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from pydantic import ValidationError

# [start:imports]
from lesson12.agent import answer_parts, build_agent, run_python
from lesson12.card import BINDINGS, make_card
from research_agent import BadEdit, DecisionIn, resume_value

# [end:imports]
HOST, PORT = os.getenv("HOST", "127.0.0.1"), int(os.getenv("PORT", "8000"))
agent = build_agent(InMemorySaver())  # a task's id names its thread of checkpoints


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


CARD = make_card(f"http://{HOST}:{PORT}")
handler = DefaultRequestHandler(ResearchExecutor(), InMemoryTaskStore(), CARD)
app = FastAPI(title="The research agent over A2A, step 2")
add_a2a_routes_to_fastapi(
    app,
    agent_card_routes=create_agent_card_routes(CARD),  # /.well-known/agent-card.json
    jsonrpc_routes=create_jsonrpc_routes(handler, rpc_url=BINDINGS["JSONRPC"]),
    rest_routes=create_rest_routes(handler, path_prefix=BINDINGS["HTTP+JSON"]),
)

if __name__ == "__main__":
    uvicorn.run(app, host=HOST, port=PORT)
