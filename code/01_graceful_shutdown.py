"""Lesson 01, step 3: stopping without dropping a request.

Run it:  python code/01_graceful_shutdown.py     (or: make lesson-01-shutdown)
Then start a slow stream and send SIGTERM (Ctrl+C sends SIGINT, which does the same):

    curl -N -X POST localhost:8000/v1/stream -H 'content-type: application/json' -d '{"query": "hi"}' &
    kill -TERM <pid>

What happens on SIGTERM, in order:
  1. /ready answers 503 at once, so a load balancer stops sending new traffic here.
  2. For DRAIN_DELAY_SECONDS the server keeps accepting requests, giving the balancer time to notice.
  3. Then uvicorn closes its listening socket (new connections are refused) and waits for
     in-flight requests, streams included, to finish, for at most GRACE_SECONDS.
  4. The lifespan shutdown runs and the process exits.
The orchestrator's own grace period (Docker's `stop -t`, Kubernetes' terminationGracePeriodSeconds)
must be longer than DRAIN_DELAY_SECONDS + GRACE_SECONDS, or it kills the process mid-drain.

The one rule: uvicorn owns SIGTERM. We chain our handler in front of uvicorn's instead of replacing it
(`loop.add_signal_handler` would replace it, and the server would then never stop).
"""

import asyncio
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from chat_model import make_chat_model
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

# Our streams always end, so let them finish on shutdown instead of sse-starlette cutting them off.
AppStatus.disable_automatic_graceful_drain()

DRAIN_DELAY_SECONDS = float(os.getenv("DRAIN_DELAY_SECONDS", "2"))
GRACE_SECONDS = int(os.getenv("GRACE_SECONDS", "20"))

logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("graceful_shutdown")

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "You are a helpful assistant."), ("human", "{query}")]
)


class ShutdownState:
    """What the app knows about its own shutdown: whether it is draining and how much is still in flight."""

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0

    def chain_sigterm_handler(self, loop: asyncio.AbstractEventLoop) -> None:
        # Called from the lifespan, after uvicorn has installed its own handlers, so we can wrap them.
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (a test client runs the app in another one)
        for sig in (signal.SIGTERM, signal.SIGINT):
            uvicorn_handler = signal.getsignal(sig)

            def on_signal(signum, frame, uvicorn_handler=uvicorn_handler):
                if self.draining:  # a second signal: stop waiting and let uvicorn decide at once
                    uvicorn_handler(signum, frame)
                    return
                self.draining = True
                logger.info(
                    "%s received: /ready now answers 503, %d request(s) in flight; "
                    "closing the listener in %.1fs, then waiting up to %ds for them",
                    signal.Signals(signum).name,
                    self.in_flight,
                    DRAIN_DELAY_SECONDS,
                    GRACE_SECONDS,
                )
                # Signal handlers must not touch the event loop directly; call_soon_threadsafe is the safe door.
                loop.call_soon_threadsafe(
                    loop.call_later, DRAIN_DELAY_SECONDS, uvicorn_handler, signum, frame
                )

            signal.signal(sig, on_signal)


class AgentRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)


class CountInFlight:
    """Plain ASGI middleware, so a streamed response counts until its last byte is sent."""

    def __init__(self, app, state: ShutdownState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


shutdown = ShutdownState()


@asynccontextmanager
async def lifespan(app: FastAPI):
    shutdown.chain_sigterm_handler(asyncio.get_running_loop())
    app.state.chain = PROMPT | make_chat_model(
        openai_api_key=os.getenv("OPENAI_API_KEY"),
        model_name=os.getenv("MODEL_NAME", "gpt-4o-mini"),
        offline_token_delay_ms=int(os.getenv("OFFLINE_TOKEN_DELAY_MS", "20")),
    )
    yield
    # uvicorn runs this only after every connection has closed (or GRACE_SECONDS ran out): the drain is over.
    logger.info(
        "Lifespan shutdown: %d request(s) still in flight, releasing resources", shutdown.in_flight
    )


app = FastAPI(title="Graceful shutdown", lifespan=lifespan)


app.add_middleware(CountInFlight, state=shutdown)


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness stays 200 while draining: the process is healthy, it is only leaving."""
    return {"status": "ok"}


@app.get("/ready")
async def ready() -> JSONResponse:
    # A real 503 status line, not a 200 with "503" in the body: balancers read the status code.
    if shutdown.draining:
        return JSONResponse({"ready": False, "reason": "shutting down"}, status_code=503)
    return JSONResponse({"ready": True})


@app.post("/v1/stream")
async def stream(body: AgentRequest, request: Request) -> EventSourceResponse:
    async def events() -> AsyncIterator[dict[str, Any]]:
        async for chunk in request.app.state.chain.astream({"query": body.query}):
            if chunk.text:
                yield {"data": chunk.text}
        yield {"data": "[DONE]"}

    return EventSourceResponse(events())


@app.post("/v1/invoke")
async def invoke(body: AgentRequest, request: Request) -> dict[str, str]:
    message = await request.app.state.chain.ainvoke({"query": body.query})
    return {"response": message.text}


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=os.getenv("HOST", "127.0.0.1"),
        port=int(os.getenv("PORT", "8000")),
        # Without this uvicorn waits for open connections forever; with it, it cancels them after the grace.
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
