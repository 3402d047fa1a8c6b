"""Lesson 01, step 5: stop on SIGTERM without losing an answer, and without cutting one silently.

On SIGTERM `ShutdownState` makes /ready answer 503 at once and serves what still arrives for
SHUTDOWN_DRAIN_SECONDS, while a load balancer notices; then it hands the signal to uvicorn, which
closes its port and gives the open requests GRACEFUL_SHUTDOWN_SECONDS. Just before that grace runs
out, `EndInTime` ends what is still open itself: a 503, or a stream's last `error` event and
`[DONE]`, where uvicorn would close the connection mid-answer.
"""

import asyncio
import functools
import json
import logging
import os
import signal
import threading

import anyio
from fastapi.responses import JSONResponse
from fastapi.sse import format_sse_event

from .errors import error_body

logger = logging.getLogger("agent_api")

SHUTDOWN_DRAIN_SECONDS = float(os.getenv("SHUTDOWN_DRAIN_SECONDS", "1"))
GRACEFUL_SHUTDOWN_SECONDS = int(os.getenv("GRACEFUL_SHUTDOWN_SECONDS", "8"))
CUT_MARGIN_SECONDS = 0.5  # end open requests this long before uvicorn's grace runs out


class ShutdownState:
    def __init__(self, drain=SHUTDOWN_DRAIN_SECONDS, grace=GRACEFUL_SHUTDOWN_SECONDS) -> None:
        self.drain, self.grace = drain, grace
        self.draining = False  # /ready answers 503 from the first SIGTERM on
        self.open_requests: set[anyio.CancelScope] = set()

    def chain_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """Our handler in front of uvicorn's, which it calls once the drain is over. Called from
        the lifespan, once uvicorn has installed its own (loop.add_signal_handler would replace
        uvicorn's: the server would never stop)."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (a test client runs the app elsewhere)
        cut_at = self.drain + max(self.grace - CUT_MARGIN_SECONDS, 0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            uvicorn_handler = signal.getsignal(sig)

            def on_signal(signum, frame, uvicorn_handler=uvicorn_handler):
                if self.draining:  # a second signal: uvicorn decides at once
                    return uvicorn_handler(signum, frame)
                self.draining = True
                name, count = signal.Signals(signum).name, len(self.open_requests)
                logger.info("%s: /ready answers 503, %d request(s) in flight", name, count)
                # A signal handler must not touch the loop: call_soon_threadsafe is the safe door.
                later = functools.partial(loop.call_soon_threadsafe, loop.call_later)
                later(self.drain, uvicorn_handler, signum, frame)  # uvicorn closes its port
                later(cut_at, self.cut_open_requests)  # just before uvicorn's grace runs out

            signal.signal(sig, on_signal)

    def cut_open_requests(self) -> None:
        for request_scope in list(self.open_requests):
            request_scope.cancel()


class EndInTime:
    """Plain ASGI: each request runs in a cancel scope that `cut_open_requests` cancels, and then
    gets an ending a client can tell from a finished answer."""

    def __init__(self, app, state: ShutdownState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False  # has the response begun (a stream's 200 and first events)?

        async def send_and_watch(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
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
        error = error_body("shutting_down", "The server is shutting down", retryable=True)
        if not started:
            await JSONResponse(error, status_code=503)(scope, receive, send)
        else:  # a stream: end it as any failed stream ends, with the error, then [DONE]
            body = format_sse_event(event="error", data_str=json.dumps(error))
            body += format_sse_event(data_str="[DONE]")  # what FastAPI writes for our events
            await send({"type": "http.response.body", "body": body, "more_body": False})
