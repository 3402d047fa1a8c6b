"""What the research routes do: consult the cache, run the agent, log, shape answers and events."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio
from sse_starlette import ServerSentEvent

from .agent import ResearchAgent, TokenCount
from .cache import ResearchCache, cache_key
from .config import Settings
from .errors import INTERNAL_ERROR, AppError, ShuttingDownError, app_error_body, error_body
from .models import ResearchResponse
from .shutdown import run_until_cut, until_cut
from .telemetry import SHUTDOWN_CUTS, STREAMS_OPEN, request_id

logger = logging.getLogger(__name__)

# Adds an answer's tokens to the caller's budget (research_agent/quotas.py).
Spend = Callable[[int], Awaitable[None]]


async def _no_budget(tokens: int) -> None:
    pass


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


def _final(response: dict) -> dict:
    """The `final` event carries what POST /v1/research returns (same fields, same order)."""
    return ResearchResponse.model_validate(response).model_dump(mode="json")


def _event(name: str, data: dict) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=json.dumps(data))


@dataclass
class ResearchService:
    """What the research routes call, with what every call needs (research_agent/deps.py builds
    it)."""

    agent: ResearchAgent
    cache: ResearchCache | None
    settings: Settings
    cut: asyncio.Event  # set when the shutdown grace runs out: the run ends now

    def _key(self, query: str, caller: str | None) -> str:
        settings = self.settings
        return cache_key(
            query,
            # CACHE_SCOPE=caller: `cached: true` must not tell B that A asked the same, in the TTL.
            scope=(caller or "anonymous") if settings.CACHE_SCOPE == "caller" else "shared",
            model=self.agent.model_label,
            search_backend=self.agent.search_backend,
            max_results=settings.SEARCH_MAX_RESULTS,
            temperature=settings.TEMPERATURE,
            version=settings.APP_VERSION,
        )

    def _response(self, query: str, result: dict, cached: bool) -> dict:
        return {
            "query": query,
            **result,
            "model": self.agent.model_label,
            "tokens_used": 0 if cached else result["tokens_used"],
            "cached": cached,
            "request_id": request_id(),
        }

    def _log_done(self, query: str, result: dict, cached: bool, started: float) -> None:
        logger.info(
            "research done",
            extra={
                "model": self.agent.model_label,
                "search_backend": self.agent.search_backend,
                "steps": len(result["steps"]),
                "sources": len(result["sources"]),
                "tokens_used": 0 if cached else result["tokens_used"],
                "cached": cached,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "query_chars": len(query),
            },
        )

    async def research(
        self, query: str, spend: Spend = _no_budget, caller: str | None = None
    ) -> dict:
        started = time.perf_counter()
        key = self._key(query, caller)
        result = await self.cache.get(key) if self.cache else None
        cached = result is not None
        if result is None:
            used = TokenCount()
            try:
                result = await run_until_cut(self.agent.research(query, used), self.cut)
            except BaseException as exc:
                if isinstance(exc, ShuttingDownError):
                    _log_cut("/v1/research", query, started)
                # A run that timed out or failed is charged the calls it made (shielded: a
                # cancelled request is one of them).
                with anyio.CancelScope(shield=True):
                    await spend(used.total)
                raise
            if self.cache:
                await self.cache.set(key, result)
            await spend(result["tokens_used"])  # a cached answer costs nothing
        self._log_done(query, result, cached, started)
        return self._response(query, result, cached)

    async def research_events(
        self, query: str, spend: Spend = _no_budget, caller: str | None = None
    ) -> AsyncIterator[ServerSentEvent]:
        """The SSE protocol: token*, tool (per tool call), final or error, then `data: [DONE]`."""
        started = time.perf_counter()
        key = self._key(query, caller)
        used, paid = TokenCount(), False
        STREAMS_OPEN.inc()
        try:
            try:
                result = await self.cache.get(key) if self.cache else None
                if result is not None:
                    yield _event("token", {"text": result["response"]})
                    self._log_done(query, result, True, started)
                    yield _event("final", _final(self._response(query, result, True)))
                else:
                    async for name, data in until_cut(self.agent.stream(query, used), self.cut):
                        if name == "final":
                            if self.cache:
                                await self.cache.set(key, data)
                            paid = True
                            await spend(data["tokens_used"])
                            self._log_done(query, data, False, started)
                            data = _final(self._response(query, data, False))
                        yield _event(name, data)
            except ShuttingDownError as exc:
                _log_cut("/v1/research/stream", query, started)
                yield _event("error", app_error_body(exc))
            except AppError as exc:
                logger.warning(
                    "research stream failed",
                    extra={"error_type": exc.error_type, "error": exc.message},
                )
                yield _event("error", app_error_body(exc))
            except Exception:
                logger.exception("research stream crashed")
                _, error_type, message = INTERNAL_ERROR
                yield _event("error", error_body(error_type, message))
            yield ServerSentEvent(data="[DONE]")
        finally:
            STREAMS_OPEN.dec()
            if not paid and used.total:
                # A caller who hangs up before `final` (or a run that fails) is charged what the
                # model made: a provider bills it. Shielded: the stream's own task is being
                # cancelled.
                with anyio.CancelScope(shield=True):
                    await spend(used.total)
