"""Lesson 01, step 1: an agent behind a small FastAPI app.

Run it:  python code/01_basic_api.py        (or: make lesson-01)
Try it:  http://localhost:8000/docs

Endpoints: GET /health (the process is alive), GET /ready (the agent can take traffic),
POST /v1/invoke (one answer as JSON), POST /v1/stream (the answer token by token, as SSE).
"""

import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

from chat_model import make_chat_model

# Our streams always end, so let them finish on shutdown instead of sse-starlette cutting them off.
AppStatus.disable_automatic_graceful_drain()

APP_VERSION = "1.0.0"
logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")  # uvicorn's format
logger = logging.getLogger("agent_api")


class AgentRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000, description="The question for the agent")
    context: dict[str, Any] | None = Field(
        default=None, description="Extra facts the agent may use"
    )


class AgentResponse(BaseModel):
    response: str
    tokens_used: int
    model: str


PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a helpful assistant. Be concise and accurate.{context}"),
        ("human", "{query}"),
    ]
)


class Agent:
    """A prompt and a chat model; the API below only talks to this class."""

    def __init__(self, model: BaseChatModel):
        self.model_name = model.model_name
        self.chain = PROMPT | model

    @staticmethod
    def _inputs(request: AgentRequest) -> dict[str, str]:
        context = f"\nContext: {json.dumps(request.context)}" if request.context else ""
        return {"query": request.query, "context": context}

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        message = await self.chain.ainvoke(self._inputs(request))
        usage = message.usage_metadata or {}
        return AgentResponse(
            response=message.text, tokens_used=usage.get("total_tokens", 0), model=self.model_name
        )

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        async for chunk in self.chain.astream(self._inputs(request)):
            if chunk.text:
                yield chunk.text


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Startup: build the agent once, before the first request.
    app.state.agent = Agent(
        make_chat_model(
            openai_api_key=os.getenv("OPENAI_API_KEY"),
            model_name=os.getenv("MODEL_NAME", "gpt-4o-mini"),
            offline_token_delay_ms=int(os.getenv("OFFLINE_TOKEN_DELAY_MS", "20")),
        ),
    )
    yield
    # Shutdown: nothing to close; a connection pool or an HTTP client would be closed at this point.


app = FastAPI(title="Basic agent API", version=APP_VERSION, lifespan=lifespan)


def get_agent(request: Request) -> Agent:
    agent = getattr(request.app.state, "agent", None)
    if agent is None:
        raise HTTPException(status_code=503, detail="Agent not initialised")
    return agent


AgentDep = Annotated[Agent, Depends(get_agent)]


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Says nothing about whether the agent is usable."""
    return {"status": "ok", "version": APP_VERSION}


@app.get("/ready")
async def ready(agent: AgentDep) -> dict[str, Any]:
    """Readiness: 200 once the agent exists, 503 (from get_agent) before that."""
    return {"ready": True, "model": agent.model_name}


@app.post("/v1/invoke")
async def invoke(request: AgentRequest, agent: AgentDep) -> AgentResponse:
    return await agent.invoke(request)


# FastAPI would document the stream as JSON; this says what it really sends, event by event.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `data:` per token, or an `error`, then `data: [DONE]`",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"enum": ["message", "error"]},
                        "data": {"type": "string"},
                    },
                    "required": ["data"],
                }
            }
        },
    }
}


@app.post("/v1/stream", response_class=EventSourceResponse, responses=SSE_RESPONSE)
async def stream(request: AgentRequest, agent: AgentDep) -> EventSourceResponse:
    """One `data:` event per token, then `data: [DONE]`; a failure sends an `error` event first."""

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for token in agent.stream(request):
                yield {"data": token}
        except Exception:
            logger.exception("Streaming failed")
            yield {
                "event": "error",
                "data": json.dumps({"error": "The agent failed while streaming"}),
            }
        yield {"data": "[DONE]"}

    return EventSourceResponse(events())


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.getenv("HOST", "127.0.0.1"),
        port=int(os.getenv("PORT", "8000")),
    )
