"""A layer around the agent's runs: the run ended with a clear error when the shutdown grace runs
out, beside the other layer the service puts around them (access/usage.py's Counted).

research_agent/web/shutdown.py sets `cut` just before uvicorn's deadline; a run still going then is
stopped here, where it can be: a JSON request answers 503 `shutting_down`, a stream sends that error
as its last event (then `[DONE]`, research_agent/service.py), and both are logged and counted in
`research_shutdown_cuts_total`. research_agent/deps.py puts it around the agent each request's
service runs.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress

from langchain_core.callbacks import BaseCallbackHandler

from .agent import AroundAgent, Runs
from .observability.metrics import SHUTDOWN_CUTS
from .web.errors import ShuttingDownError, api_error_body

logger = logging.getLogger(__name__)


async def until_cut(events: AsyncIterator, cut: asyncio.Event) -> AsyncIterator:
    """Yield from `events` until `cut` is set, then close them and raise ShuttingDownError."""
    waiter = asyncio.ensure_future(cut.wait())
    step = None
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait({step, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                raise ShuttingDownError()
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        waiter.cancel()
        if step is not None and not step.done():
            step.cancel()  # the generator runs its finally blocks: the agent run stops
            with suppress(BaseException):
                await step
        with suppress(BaseException):
            await events.aclose()


async def run_until_cut(coroutine, cut: asyncio.Event):
    """Await `coroutine`, unless `cut` is set first: then cancel it and raise ShuttingDownError."""
    task = asyncio.ensure_future(coroutine)
    waiter = asyncio.ensure_future(cut.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ShuttingDownError()
        return task.result()
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            with suppress(BaseException):
                await task


class UntilCut(AroundAgent):
    """The agent (or a layer around it), ended with ShuttingDownError when `cut` is set: a JSON
    request answers 503 `shutting_down`, a stream sends that error as its last event."""

    def __init__(self, agent: Runs, cut: asyncio.Event):
        super().__init__(agent)
        self.cut = cut

    async def research(self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()) -> dict:
        started = time.perf_counter()
        try:
            return await run_until_cut(self.agent.research(query, callbacks), self.cut)
        except ShuttingDownError:
            _log_cut("/v1/research", query, started)
            raise

    async def stream(
        self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()
    ) -> AsyncIterator[tuple[str, dict]]:
        started = time.perf_counter()
        try:
            async for item in until_cut(self.agent.stream(query, callbacks), self.cut):
                yield item
        except ShuttingDownError as exc:
            _log_cut("/v1/research/stream", query, started)
            yield "error", api_error_body(exc)


def _log_cut(handler: str, query: str, started: float) -> None:
    SHUTDOWN_CUTS.labels(handler).inc()
    logger.warning(
        "request cut by shutdown",
        extra={
            "handler": handler,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "query_chars": len(query),
        },
    )
