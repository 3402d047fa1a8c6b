"""Lesson 01, step 3: the basic API, stopping without dropping a request.

Run it:  python code/01_graceful_shutdown.py     (or: make lesson-01-shutdown)
Diff it: diff code/01_basic_api.py code/01_graceful_shutdown.py

This is step 1 plus shutdown handling, each block marked `NEW in step 3`. On SIGTERM (or Ctrl+C):
  1. /ready answers 503 at once, so a load balancer stops sending new traffic here; requests
     that still arrive are served, for SHUTDOWN_DRAIN_SECONDS, while the balancer notices.
  2. uvicorn closes its listening socket and waits up to GRACEFUL_SHUTDOWN_SECONDS for the
     requests in flight, streams included.
  3. Just before that grace runs out, the app ends whatever is still open itself: a 503
     `shutting_down` error, or an `event: error` that closes a stream. Nothing is cut silently.
  4. The lifespan shutdown runs and the process exits.
The one rule: uvicorn owns SIGTERM. We chain our handler in front of uvicorn's.
Step 2's production habits are not repeated here; lesson 02's research agent has both.
"""

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
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


# NEW in step 3: the shutdown budget (see the docs for how it fits the orchestrator's grace)
# After SIGTERM: /ready is 503 while requests are still served; then the listener is closed and
# the requests in flight get the grace.
SHUTDOWN_DRAIN_SECONDS = float(os.getenv("SHUTDOWN_DRAIN_SECONDS", "1"))
GRACEFUL_SHUTDOWN_SECONDS = int(os.getenv("GRACEFUL_SHUTDOWN_SECONDS", "8"))
CUT_MARGIN_SECONDS = 0.5  # end open requests this long before uvicorn's grace runs out
# How a request the grace cannot finish ends; lesson 02's research agent ends one the same way.
SHUTTING_DOWN = {
    "error": {"type": "shutting_down", "message": "The server is shutting down", "retryable": True}
}


# NEW in step 3: what the app knows about its own shutdown, and the requests it must end well.
class ShutdownState:
    def __init__(self) -> None:
        self.draining = False
        self.open_requests: set[anyio.CancelScope] = set()

    def chain_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called from the lifespan, after uvicorn has installed its handlers, so we can wrap them.
        # (loop.add_signal_handler would replace uvicorn's handler: the server would never stop.)
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (a test client runs the app elsewhere)
        drain, grace = SHUTDOWN_DRAIN_SECONDS, GRACEFUL_SHUTDOWN_SECONDS
        for sig in (signal.SIGTERM, signal.SIGINT):
            uvicorn_handler = signal.getsignal(sig)

            def on_signal(signum, frame, uvicorn_handler=uvicorn_handler):
                if self.draining:  # a second signal: let uvicorn decide at once
                    uvicorn_handler(signum, frame)
                    return
                self.draining = True
                logger.info(
                    "%s received: /ready now answers 503, %d request(s) in flight; closing the "
                    "listener in %gs, then waiting up to %ds for them",
                    signal.Signals(signum).name,
                    len(self.open_requests),
                    drain,
                    grace,
                )
                # A signal handler must not touch the loop: call_soon_threadsafe is the safe door.
                loop.call_soon_threadsafe(loop.call_later, drain, uvicorn_handler, signum, frame)
                cut_at = drain + max(grace - CUT_MARGIN_SECONDS, 0)
                loop.call_soon_threadsafe(loop.call_later, cut_at, self.cut_open_requests)

            signal.signal(sig, on_signal)

    def cut_open_requests(self) -> None:
        for request_scope in list(self.open_requests):
            request_scope.cancel()


class EndInTime:
    """Plain ASGI: each request runs in a cancel scope that the shutdown closes before uvicorn does.

    uvicorn would cancel a request still open at the end of its grace and close the connection:
    the client could not tell that from a finished answer. Cut here, it gets a proper ending.
    """

    def __init__(self, app, state: ShutdownState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        response_started = False

        async def send_and_watch(message):
            nonlocal response_started
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        with anyio.CancelScope() as request_scope:
            self.state.open_requests.add(request_scope)
            try:
                await self.app(scope, receive, send_and_watch)
            finally:
                self.state.open_requests.discard(request_scope)
        if not request_scope.cancelled_caught:
            return
        logger.warning("Cut by shutdown: the grace ran out: %s %s", scope["method"], scope["path"])
        if not response_started:
            await JSONResponse(SHUTTING_DOWN, status_code=503)(scope, receive, send)
        else:  # only streams send their response in pieces: end this one with an error event
            # The same end as a failed stream: the error, then [DONE], so a client stops reading.
            event = ServerSentEvent(json.dumps(SHUTTING_DOWN), event="error").encode()
            done = ServerSentEvent("[DONE]").encode()
            await send({"type": "http.response.body", "body": event + done, "more_body": False})


shutdown = ShutdownState()


@asynccontextmanager
async def lifespan(app: FastAPI):
    shutdown.chain_signal_handlers(asyncio.get_running_loop())  # NEW in step 3
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
    # NEW in step 3: uvicorn gets here only once every connection has closed.
    logger.info("Stopped")


app = FastAPI(title="Graceful-shutdown agent API", version=APP_VERSION, lifespan=lifespan)
app.add_middleware(EndInTime, state=shutdown)  # NEW in step 3


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
    if shutdown.draining:  # NEW in step 3: a real 503, so a balancer sends traffic elsewhere
        raise HTTPException(status_code=503, detail="The server is shutting down")
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
        # NEW in step 3: without it uvicorn waits for open connections forever.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
