"""Lesson 01, step 1: an agent behind a small FastAPI app, as one JSON answer or as a stream.

Run it:  make lesson-01 STEP=1     then open http://localhost:8000/docs
"""

import logging
import os
from collections.abc import AsyncIterable
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from chat_model import make_chat_model
from lesson01.agent import Agent, AgentRequest, AgentResponse

logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")  # uvicorn's format
logger = logging.getLogger("agent_api")


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Before the first request: build the agent once, not a model client per request.
    app.state.agent = Agent(
        make_chat_model(
            openai_api_key=os.getenv("OPENAI_API_KEY"),
            model_name=os.getenv("MODEL_NAME", "gpt-4o-mini"),
            offline_token_delay_ms=int(os.getenv("OFFLINE_TOKEN_DELAY_MS", "20")),
        )
    )
    yield
    # When the server stops: close what the agent holds (a client, a pool). Ours holds nothing.


app = FastAPI(title="Agent API", version="1.0.0", lifespan=lifespan)


def get_agent(request: Request) -> Agent:
    agent = getattr(request.app.state, "agent", None)
    if agent is None:  # asked before the lifespan has built it
        raise HTTPException(status_code=503, detail="Agent not initialised")
    return agent


AgentDep = Annotated[Agent, Depends(get_agent)]


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. It never calls the model."""
    return {"status": "ok"}


@app.get("/ready")
async def ready(agent: AgentDep) -> dict:
    """Readiness: 200 once the agent exists, 503 (from get_agent) before that."""
    return {"ready": True, "model": agent.model_name}


@app.post("/v1/invoke")
async def invoke(request: AgentRequest, agent: AgentDep) -> AgentResponse:
    return await agent.invoke(request)


@app.post("/v1/stream", response_class=EventSourceResponse)
async def stream(request: AgentRequest, agent: AgentDep) -> AsyncIterable[ServerSentEvent]:
    """A `data:` event per token, then `data: [DONE]`; a failure sends an `error` event first."""
    try:
        async for token in agent.stream(request):
            yield ServerSentEvent(raw_data=token)  # raw: the text itself, not a JSON string
    except Exception:  # the 200 is sent already: a failure can only be one more event
        logger.exception("Streaming failed")
        yield ServerSentEvent(event="error", data={"error": "The agent failed while streaming"})
    yield ServerSentEvent(raw_data="[DONE]")


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.getenv("HOST", "127.0.0.1"),
        port=int(os.getenv("PORT", "8000")),
    )
