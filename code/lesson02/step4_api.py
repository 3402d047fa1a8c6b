"""Lesson 02, step 4: step 3's agent behind FastAPI, as one JSON answer or as a stream of events.

Run it:  make lesson-02 STEP=4
The agent is step 3's, imported from code/lesson02/step3_limits.py: an edit there is served here.
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from langchain_core.messages import HumanMessage, ToolMessage
from pydantic import BaseModel, Field

from lesson02 import step3_limits as step3  # step 3's agent, imported by name

logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")  # uvicorn's format
logger = logging.getLogger("lesson02")

INTERNAL_ERROR_MESSAGE = "Internal server error"  # all a client learns of a crash: it is logged
TIMED_OUT = {"error": {"type": "timeout", "message": "research took longer than its deadline"}}


async def stream(query: str) -> AsyncIterator[tuple[str, dict]]:
    """The run of `research` as it happens: ("tool", the search) after each search, ("token",
    {"text"}) for each piece of the answer, then ("final", the answer)."""
    run, messages = step3.Run(), []
    updates = step3.agent.astream(
        {"messages": [HumanMessage(query)]}, context=run, stream_mode=["updates", "messages"]
    )
    deadline = asyncio.get_running_loop().time() + step3.REQUEST_TIMEOUT_SECONDS
    while True:
        async with asyncio.timeout_at(deadline):  # the run's deadline, not the client's reading
            update = await anext(updates, None)
        if update is None:
            break
        mode, data = update
        if mode == "messages":  # a piece of a message, as the model writes it
            chunk, meta = data
            if meta["langgraph_node"] == "model" and chunk.text:
                yield "token", {"text": chunk.text}
            continue
        for node_update in data.values():  # "updates": what each node of the loop added, whole
            for message in (node_update or {}).get("messages", []):
                messages.append(message)
                if isinstance(message, ToolMessage):
                    yield "tool", message.artifact
    yield "final", step3.result(query, messages, run)


class ResearchRequest(BaseModel):
    query: str = Field(min_length=3, max_length=2000, examples=[step3.QUESTION])


app = FastAPI(title="Research agent, lesson 02")


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.exception_handler(TimeoutError)  # `research` raises it when the run's deadline passes
async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
    return JSONResponse(TIMED_OUT, status_code=504)


@app.post("/v1/research")
async def research_route(body: ResearchRequest) -> dict:
    return await step3.research(body.query)


@app.post("/v1/research/stream", response_class=EventSourceResponse)
async def research_stream(body: ResearchRequest) -> AsyncIterable[ServerSentEvent]:
    # FastAPI writes the events, and the headers that keep proxies from holding them back.
    try:
        async for name, data in stream(body.query):
            yield ServerSentEvent(event=name, data=data)  # data: written as JSON
    except TimeoutError:
        yield ServerSentEvent(event="error", data=TIMED_OUT)
    except Exception:  # the 200 is sent already: a failure can only be one more event
        logger.exception("research stream failed")
        failed = {"error": {"type": "internal_error", "message": INTERNAL_ERROR_MESSAGE}}
        yield ServerSentEvent(event="error", data=failed)
    yield ServerSentEvent(raw_data="[DONE]")  # raw: the text itself, not a JSON string


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
