"""SIGTERM in three steps: drain, grace, then end what is still running with a clear error.

1. At once: /ready answers 503, so a load balancer stops sending new requests. Requests that still
   arrive are served: the balancer needs SHUTDOWN_DRAIN_SECONDS to notice, and refusing them would
   turn its delay into errors. (Behind plain Docker or Compose nothing polls /ready: keep it short.)
2. After the drain, uvicorn's own handler runs: it closes the listener and gives open requests
   GRACEFUL_SHUTDOWN_SECONDS (main.py passes it to uvicorn as timeout_graceful_shutdown).
3. Just before that grace runs out, `cut` is set: a stream still open sends `event: error` of type
   `shutting_down` (retryable) and `[DONE]`, a JSON request answers 503 `shutting_down`; both are
   logged and counted, instead of uvicorn cancelling them mid-token with nothing said.

This module is the process's side: `Shutdown`, whose SIGTERM handler the lifespan installs, and
`NotReadyWhileDraining`, which answers /ready (research_agent/app.py attaches both). What a request
still running does at the cut is the agent's side: research_agent/until_cut.py, which the service
puts around the agent's runs (research_agent/deps.py).
"""

import asyncio
import logging
import os
import signal
import threading

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import NotReadyError, api_error_handler

logger = logging.getLogger(__name__)


def cut_margin(grace_seconds: float) -> float:
    """How long before uvicorn's deadline the app ends open requests (time to send the error)."""
    return min(1.0, grace_seconds / 4)


class Shutdown:
    def __init__(self, drain_seconds: float, grace_seconds: float):
        self.drain_seconds = drain_seconds
        self.grace_seconds = grace_seconds
        self.draining = False  # /ready answers 503 from the first SIGTERM on
        self.cut = asyncio.Event()  # set when open requests must end now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous = None
        self._handed_over = False

    def install(self) -> None:
        """Chain in front of the current SIGTERM handler (uvicorn's, when called from the lifespan).

        signal.signal, not loop.add_signal_handler: that would replace uvicorn's handler and the
        server would never stop. Signals can only be handled in the main thread.
        """
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        # A signal handler may interrupt the event loop anywhere: set a flag, schedule the rest.
        if self.draining:  # a second SIGTERM: no more drain
            self._loop.call_soon_threadsafe(self._hand_over, signum, frame)
            return
        self.draining = True
        self._loop.call_soon_threadsafe(self._start_drain, signum, frame)

    def _start_drain(self, signum, frame) -> None:
        logger.info(
            "SIGTERM received: readiness now 503, still serving during the drain",
            extra={"drain_seconds": self.drain_seconds, "grace_seconds": self.grace_seconds},
        )
        self._loop.call_later(self.drain_seconds, self._hand_over, signum, frame)

    def _hand_over(self, signum, frame) -> None:
        if self._handed_over:
            return
        self._handed_over = True
        logger.info("drain over: closing the listener, finishing in-flight requests")
        after = max(self.grace_seconds - cut_margin(self.grace_seconds), 0)
        self._loop.call_later(after, self._cut)
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):  # not under uvicorn: behave as if not chained
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    def _cut(self) -> None:
        logger.info("shutdown grace over: ending the requests still open")
        self.cut.set()


class NotReadyWhileDraining:
    """GET /ready answers 503 `not_ready` from the first SIGTERM on (app.state.shutdown), so a load
    balancer stops sending new requests; every other route still serves them."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        probe = scope["type"] == "http" and (scope["method"], scope["path"]) == ("GET", "/ready")
        if probe and scope["app"].state.shutdown.draining:
            error = NotReadyError("the server is shutting down")
            response = await api_error_handler(Request(scope), error)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
