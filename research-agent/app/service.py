"""What the research routes do: consult the cache, run the agent, log, and shape the answer or events."""

import json
import logging
import time
from collections.abc import AsyncIterator

from sse_starlette import ServerSentEvent

from .agent import ResearchAgent
from .cache import ResearchCache, cache_key
from .config import Settings
from .errors import AppError
from .telemetry import request_id_var

logger = logging.getLogger(__name__)


def _key(agent: ResearchAgent, settings: Settings, query: str) -> str:
    return cache_key(
        query,
        model=agent.model_label,
        search_backend=agent.search_backend,
        max_results=settings.SEARCH_MAX_RESULTS,
        temperature=settings.TEMPERATURE,
        version=settings.APP_VERSION,
    )


def _response(query: str, agent: ResearchAgent, result: dict, cached: bool) -> dict:
    return {
        "query": query,
        **result,
        "model": agent.model_label,
        "tokens_used": 0 if cached else result["tokens_used"],
        "cached": cached,
        "request_id": request_id_var.get(),
    }


def _log_done(query: str, agent: ResearchAgent, result: dict, cached: bool, started: float) -> None:
    logger.info(
        "research done",
        extra={
            "model": agent.model_label,
            "search_backend": agent.search_backend,
            "steps": len(result["steps"]),
            "sources": len(result["sources"]),
            "tokens_used": 0 if cached else result["tokens_used"],
            "cached": cached,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "query_chars": len(query),
        },
    )


async def research(
    agent: ResearchAgent, cache: ResearchCache | None, settings: Settings, query: str
) -> dict:
    started = time.perf_counter()
    key = _key(agent, settings, query)
    result = await cache.get(key) if cache else None
    cached = result is not None
    if result is None:
        result = await agent.research(query)
        if cache:
            await cache.set(key, result)
    _log_done(query, agent, result, cached, started)
    return _response(query, agent, result, cached)


def _event(name: str, data: dict) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=json.dumps(data))


async def research_events(
    agent: ResearchAgent, cache: ResearchCache | None, settings: Settings, query: str
) -> AsyncIterator[ServerSentEvent]:
    """The SSE protocol: token*, tool (per tool call), then final or error, then `data: [DONE]`."""
    started = time.perf_counter()
    key = _key(agent, settings, query)
    try:
        result = await cache.get(key) if cache else None
        if result is not None:
            yield _event("token", {"text": result["response"]})
            _log_done(query, agent, result, True, started)
            yield _event("final", _response(query, agent, result, True))
        else:
            async for name, data in agent.stream(query):
                if name == "final":
                    if cache:
                        await cache.set(key, data)
                    _log_done(query, agent, data, False, started)
                    data = _response(query, agent, data, False)
                yield _event(name, data)
    except AppError as exc:
        logger.warning(
            "research stream failed", extra={"error_type": exc.error_type, "error": exc.message}
        )
        yield _event(
            "error",
            {
                "error": {
                    "type": exc.error_type,
                    "message": exc.message,
                    "request_id": request_id_var.get(),
                }
            },
        )
    except Exception:
        logger.exception("research stream crashed")
        yield _event(
            "error",
            {
                "error": {
                    "type": "internal_error",
                    "message": "Internal server error",
                    "request_id": request_id_var.get(),
                }
            },
        )
    yield ServerSentEvent(data="[DONE]")
