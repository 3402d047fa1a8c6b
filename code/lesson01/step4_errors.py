"""Lesson 01, step 4: step 3 with one error shape for every failure, and a deadline on the model.

Run it:  make lesson-01 STEP=4
"""

import asyncio
import logging
import os
from collections.abc import AsyncIterable
from contextlib import asynccontextmanager
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from chat_model import make_chat_model
from lesson01.agent import Agent, AgentRequest, AgentResponse
from lesson01.errors import ERROR_HANDLERS, INTERNAL_ERROR, ModelError, error_body, model_deadline
from lesson01.request_context import RequestContextMiddleware, configure_logging

configure_logging()  # one JSON object per log line, with the id of the request it is for
logger = logging.getLogger("agent_api")

registry = CollectorRegistry()  # ours alone: loading this file twice (the tests do) is harmless
REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
)
LATENCY = Histogram(
    "http_request_duration_seconds", "To the last byte", ["method", "route"], registry=registry
)


def count(method: str, route: str, status: int, seconds: float) -> None:
    """Each request under its route template (/v1/invoke), never its path: a scanner's thousand
    made-up paths share one series, `unmatched`, instead of making a thousand."""
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


REQUEST_TIMEOUT_SECONDS = float(os.getenv("REQUEST_TIMEOUT_SECONDS", "30"))


def deadline() -> float:
    """REQUEST_TIMEOUT_SECONDS from now, on the event loop's clock."""
    return asyncio.get_running_loop().time() + REQUEST_TIMEOUT_SECONDS


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


app = FastAPI(
    title="Agent API", version="1.0.0", lifespan=lifespan, exception_handlers=ERROR_HANDLERS
)
app.add_middleware(RequestContextMiddleware, on_done=count)  # and each request is counted


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


@app.get("/metrics", response_class=PlainTextResponse)
async def metrics() -> str:
    """What Prometheus scrapes: every counter and histogram of the registry, as text."""
    return generate_latest(registry).decode()


@app.post("/v1/invoke")
async def invoke(request: AgentRequest, agent: AgentDep) -> AgentResponse:
    async with model_deadline(deadline()):
        return await agent.invoke(request)


@app.post("/v1/stream", response_class=EventSourceResponse)
async def stream(request: AgentRequest, agent: AgentDep) -> AsyncIterable[ServerSentEvent]:
    """A `data:` event per token, then `data: [DONE]`; a failure sends an `error` event first."""
    tokens, ends = agent.stream(request), deadline()
    try:
        while True:
            async with model_deadline(ends):  # cuts a wait for the model, never our own yield
                token = await anext(tokens, None)
            if token is None:
                break
            yield ServerSentEvent(raw_data=token)  # raw: the text itself, not a JSON string
    except ModelError as exc:  # the 200 is sent already: a failure can only be one more event
        yield ServerSentEvent(event="error", data=error_body(exc.error_type, str(exc)))
    except Exception:
        logger.exception("Streaming failed")
        yield ServerSentEvent(event="error", data=error_body(*INTERNAL_ERROR))
    yield ServerSentEvent(raw_data="[DONE]")


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.getenv("HOST", "127.0.0.1"),
        port=int(os.getenv("PORT", "8000")),
        log_config=None,  # uvicorn's own lines go to our JSON logging too...
        access_log=False,  # ...but not its access line: the middleware logs each request
    )
