"""What the research routes do: consult the cache, run the agent, log, shape answers and events."""

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from asgi_correlation_id.context import correlation_id
from fastapi.sse import ServerSentEvent

from .agent import Runs
from .schemas import ResearchResponse
from .web.errors import INTERNAL_ERROR, AppError, api_error_body, error_body

logger = logging.getLogger(__name__)


class AnswerCache(Protocol):
    """Answers kept by question (research_agent/cache.py, over Redis)."""

    async def get(self, query: str) -> dict | None: ...

    async def set(self, query: str, result: dict) -> None: ...


def _final(response: dict) -> dict:
    """The `final` event carries what POST /v1/research returns (same fields, same order)."""
    return ResearchResponse.model_validate(response).model_dump(mode="json")


def _event(name: str, data: dict) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=data)  # FastAPI writes `data` as JSON


@dataclass
class ResearchService:
    """What the research routes call: the agent (or the layers the app puts around it), and the
    cache when there is one."""

    agent: Runs
    cache: AnswerCache | None = None

    def _response(self, query: str, result: dict, cached: bool) -> dict:
        return {
            "query": query,
            **result,
            "model": self.agent.model_label,
            "tokens_used": 0 if cached else result["tokens_used"],
            "cached": cached,
            "request_id": correlation_id.get() or "-",  # the X-Request-ID (research_agent/app.py)
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

    async def research(self, query: str) -> dict:
        started = time.perf_counter()
        result = await self.cache.get(query) if self.cache else None
        cached = result is not None
        if result is None:
            result = await self.agent.research(query)
            if self.cache:
                await self.cache.set(query, result)
        self._log_done(query, result, cached, started)
        return self._response(query, result, cached)

    async def research_events(self, query: str) -> AsyncIterator[ServerSentEvent]:
        """The SSE protocol: token*, tool (per tool call), final or error, then `data: [DONE]`."""
        started = time.perf_counter()
        try:
            result = await self.cache.get(query) if self.cache else None
            if result is not None:
                yield _event("token", {"text": result["response"]})
                self._log_done(query, result, True, started)
                yield _event("final", _final(self._response(query, result, True)))
            else:
                async for name, data in self.agent.stream(query):
                    if name == "final":
                        if self.cache:
                            await self.cache.set(query, data)
                        self._log_done(query, data, False, started)
                        data = _final(self._response(query, data, False))
                    yield _event(name, data)
        except AppError as exc:
            logger.warning(
                "research stream failed",
                extra={"error_type": exc.error_type, "error": exc.message},
            )
            yield _event("error", api_error_body(exc))
        except Exception:
            logger.exception("research stream crashed")
            _, error_type, message = INTERNAL_ERROR
            yield _event("error", error_body(error_type, message))
        yield ServerSentEvent(raw_data="[DONE]")  # raw: the text itself, not a JSON string
