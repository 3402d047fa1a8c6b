"""Lesson 02, step 5: step 4 with a Redis cache, so a question asked again costs no tokens.

Run it:  make lesson-02 STEP=5
Diff it: diff code/lesson02/step4_api.py code/lesson02/step5_cache.py
Redis:   redis-server --port 6379 (or set REDIS_URL); without it, answers come uncached.
"""

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterable, AsyncIterator

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from langchain_core.messages import HumanMessage, ToolMessage
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lesson02 import step3_limits as step3  # step 3's agent, imported by name

logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")  # uvicorn's format
logger = logging.getLogger("lesson02")

INTERNAL_ERROR_MESSAGE = "Internal server error"  # all a client learns of a crash: it is logged
TIMED_OUT = {"error": {"type": "timeout", "message": "research took longer than its deadline"}}
CACHE_TTL_SECONDS = int(os.getenv("CACHE_TTL_SECONDS", "3600"))
# A Redis that does not answer within half a second counts as a miss: the answer comes anyway.
redis = Redis.from_url(os.getenv("REDIS_URL", "redis://localhost:6379/0"), socket_timeout=0.5)


def cache_key(query: str) -> str:
    """The same key for the same answer: the question however spaced, the model, the search."""
    material = json.dumps([" ".join(query.split()), step3.MODEL_NAME, step3.SEARCH_MAX_RESULTS])
    return "lesson02:answer:" + hashlib.sha256(material.encode()).hexdigest()


async def cached(query: str) -> dict | None:
    try:
        kept = await redis.get(cache_key(query))
    except (RedisError, OSError) as exc:  # a cache is an optimisation: never fail a request on it
        logger.warning("redis unavailable, cache bypassed: %s", exc)
        return None
    return None if kept is None else json.loads(kept) | {"query": query, "tokens_used": 0}


async def remember(query: str, answer: dict) -> None:
    try:
        await redis.set(cache_key(query), json.dumps(answer), ex=CACHE_TTL_SECONDS)
    except (RedisError, OSError) as exc:
        logger.warning("redis unavailable, answer not cached: %s", exc)


async def stream(query: str) -> AsyncIterator[tuple[str, dict]]:
    """The run of `research` as it happens: ("tool", the search) after each search, ("token",
    {"text"}) for each piece of the answer, then ("final", the answer)."""
    if (answer := await cached(query)) is not None:  # the whole answer at once
        yield "token", {"text": answer["response"]}
        yield "final", answer | {"cached": True}
        return
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
    answer = step3.result(query, messages, run)
    await remember(query, answer)
    yield "final", answer | {"cached": False}


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
    if (answer := await cached(body.query)) is not None:
        return answer | {"cached": True}
    answer = await step3.research(body.query)
    await remember(body.query, answer)
    return answer | {"cached": False}


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
