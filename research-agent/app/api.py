"""The HTTP API: routes, dependencies, lifespan and the application factory."""

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

from . import service
from .agent import ResearchAgent
from .cache import ResearchCache
from .config import Settings, get_settings
from .errors import NotReadyError, install_error_handlers, responses
from .middleware import install_middleware
from .models import (
    HealthResponse,
    ReadyResponse,
    ResearchRequest,
    ResearchResponse,
    StreamEvent,
)
from .shutdown import Shutdown
from .telemetry import configure_logging

logger = logging.getLogger(__name__)


# --- Dependencies (tests override them through app.dependency_overrides) --------------------------


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_agent(request: Request) -> ResearchAgent:
    agent = request.app.state.agent
    if agent is None:
        raise NotReadyError("the agent is still starting")
    return agent


def get_cache(request: Request) -> ResearchCache | None:
    return request.app.state.cache


def get_shutdown_cut(request: Request) -> asyncio.Event:
    """Set when the shutdown grace is about to run out: open requests must end now."""
    return request.app.state.shutdown.cut


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
AgentDep = Annotated[ResearchAgent, Depends(get_agent)]
CacheDep = Annotated[ResearchCache | None, Depends(get_cache)]
CutDep = Annotated[asyncio.Event, Depends(get_shutdown_cut)]


# --- Routes ---------------------------------------------------------------------------------------

# What each error status really sends (400: a body that is not UTF-8; 413: over MAX_BODY_BYTES).
RESEARCH_ERRORS = (400, 413, 422, 500, 502, 503, 504)
router = APIRouter()


class SSEResponse(EventSourceResponse):
    media_type = "text/event-stream"  # so the OpenAPI schema files the events under this type


SSE_ITEMS_ARE_OBJECTS = {
    "responses": {"200": {"content": {"text/event-stream": {"schema": {"type": "object"}}}}}
}


@router.get("/health", response_model=HealthResponse)
async def health(settings: SettingsDep) -> HealthResponse:
    """Liveness: the process serves HTTP. Never calls the model, the search backend or Redis."""
    return HealthResponse(
        version=settings.APP_VERSION,
        model=settings.model_label,
        search_backend=settings.search_backend,
    )


@router.get("/ready", response_model=ReadyResponse, responses=responses(503))
async def ready(request: Request, agent: AgentDep) -> ReadyResponse:
    """Readiness: 503 until the agent is built and again from SIGTERM on. A failing cache is
    reported ("bypassed"), not failed on: the service still answers without it."""
    if request.app.state.shutdown.draining:
        raise NotReadyError("the server is shutting down")
    cache = request.app.state.cache
    return ReadyResponse(
        model=agent.model_label,
        search_backend=agent.search_backend,
        cache=cache.state if cache is not None else "disabled",
    )


@router.post("/v1/research", response_model=ResearchResponse, responses=responses(*RESEARCH_ERRORS))
async def research(
    body: ResearchRequest, agent: AgentDep, cache: CacheDep, settings: SettingsDep, cut: CutDep
) -> dict:
    """Research a question: the agent searches, then answers citing its sources as [1], [2]..."""
    return await service.research(agent, cache, settings, body.query, cut)


@router.post(
    "/v1/research/stream",
    response_class=SSEResponse,
    responses={
        200: {"model": StreamEvent, "description": "One event per item"},
        **responses(*RESEARCH_ERRORS, streaming=True),
    },
    # FastAPI types a non-JSON body as a string; each event is an object {event, data}.
    openapi_extra=SSE_ITEMS_ARE_OBJECTS,
)
async def research_stream(
    body: ResearchRequest, agent: AgentDep, cache: CacheDep, settings: SettingsDep, cut: CutDep
) -> SSEResponse:
    """Server-sent events: `token`*, `tool` per search, `final` or `error`, then `data: [DONE]`."""
    events = service.research_events(agent, cache, settings, body.query, cut)
    return SSEResponse(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# --- Lifecycle ------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    # sse-starlette would cancel open streams at once on SIGTERM; ours get the grace and then end
    # with a shutting_down error (app/shutdown.py).
    AppStatus.disable_automatic_graceful_drain()
    app.state.shutdown = Shutdown(
        settings.SHUTDOWN_DRAIN_SECONDS, settings.GRACEFUL_SHUTDOWN_SECONDS
    )
    app.state.shutdown.install()
    if app.state.agent is None:
        # Builds the search index: off the event loop.
        app.state.agent = await asyncio.to_thread(ResearchAgent, settings)
    if settings.REDIS_URL and app.state.cache is None:
        app.state.cache = ResearchCache(
            settings.REDIS_URL, settings.CACHE_TTL_SECONDS, settings.CACHE_BREAKER_SECONDS
        )
        await app.state.cache.ping()  # logs a warning if Redis is down; we start anyway
    logger.info(
        "research agent ready",
        extra={
            "model": app.state.agent.model_label,
            "search_backend": app.state.agent.search_backend,
            "cache": app.state.cache.state if app.state.cache else "disabled",
            "version": settings.APP_VERSION,
        },
    )
    yield
    app.state.shutdown.draining = True
    if app.state.cache is not None:
        await app.state.cache.close()
    logger.info("research agent stopped")


def create_app(settings: Settings | None = None, agent: ResearchAgent | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.LOG_LEVEL)
    app = FastAPI(
        title="Research Agent",
        version=settings.APP_VERSION,
        description="A LangChain research agent that cites its sources. Offline by default.",
        lifespan=lifespan,
    )
    app.state.settings, app.state.agent, app.state.cache = settings, agent, None
    # Until the lifespan installs the real one (and in tests that never start it): never draining.
    app.state.shutdown = Shutdown(
        settings.SHUTDOWN_DRAIN_SECONDS, settings.GRACEFUL_SHUTDOWN_SECONDS
    )
    app.include_router(router)
    install_error_handlers(app)
    instrumentator = install_middleware(app, settings)
    instrumentator.expose(
        app,
        include_in_schema=True,
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text exposition format)",
    )
    return app
