"""The HTTP API: routes, dependencies, error handlers and the application factory."""

import asyncio
import logging
import os
import signal
import threading
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import service
from .agent import ResearchAgent
from .cache import ResearchCache
from .config import Settings, get_settings
from .errors import AppError, NotReadyError
from .middleware import RequestContextMiddleware, error_body
from .models import ErrorResponse, HealthResponse, ReadyResponse, ResearchRequest, ResearchResponse
from .telemetry import configure_logging

logger = logging.getLogger(__name__)


# --- Dependencies (tests override get_agent / get_cache through app.dependency_overrides) -----------


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_agent(request: Request) -> ResearchAgent:
    agent = request.app.state.agent
    if agent is None:
        raise NotReadyError("the agent is still starting")
    return agent


def get_cache(request: Request) -> ResearchCache | None:
    return request.app.state.cache


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
AgentDep = Annotated[ResearchAgent, Depends(get_agent)]
CacheDep = Annotated[ResearchCache | None, Depends(get_cache)]


# --- Routes ------------------------------------------------------------------------------------------

ERRORS = {code: {"model": ErrorResponse} for code in (413, 422, 500, 502, 503, 504)}
router = APIRouter()


@router.get("/health", response_model=HealthResponse)
async def health(settings: SettingsDep) -> HealthResponse:
    """Liveness: the process serves HTTP. Never calls the model, the search backend or Redis."""
    return HealthResponse(
        version=settings.APP_VERSION,
        model=settings.model_label,
        search_backend=settings.search_backend,
    )


@router.get("/ready", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
async def ready(request: Request, agent: AgentDep) -> ReadyResponse:
    """Readiness: 503 until the agent is built and again once SIGTERM has been received."""
    if request.app.state.shutting_down:
        raise NotReadyError("the server is shutting down")
    cache = "redis" if request.app.state.cache is not None else "disabled"
    return ReadyResponse(model=agent.model_label, search_backend=agent.search_backend, cache=cache)


@router.post("/v1/research", response_model=ResearchResponse, responses=ERRORS)
async def research(
    body: ResearchRequest, agent: AgentDep, cache: CacheDep, settings: SettingsDep
) -> dict:
    """Research a question: the agent searches, then answers citing its sources as [1], [2]..."""
    return await service.research(agent, cache, settings, body.query)


@router.post("/v1/research/stream", responses=ERRORS)
async def research_stream(
    body: ResearchRequest, agent: AgentDep, cache: CacheDep, settings: SettingsDep
):
    """Server-sent events: `token`*, `tool` per search, then `final` (or `error`), then `data: [DONE]`."""
    events = service.research_events(agent, cache, settings, body.query)
    return EventSourceResponse(
        events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# --- Errors: one JSON shape, {"error": {"type", "message", "request_id"}} ----------------------------

_HTTP_ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def app_error_handler(request: Request, exc: AppError) -> JSONResponse:
    return JSONResponse(error_body(exc.error_type, exc.message), status_code=exc.status_code)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    return JSONResponse(
        error_body(error_type, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
    )


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse(
        error_body("validation_error", "the request is not valid", details), status_code=422
    )


# --- Lifecycle -----------------------------------------------------------------------------------------


def watch_for_sigterm(state) -> None:
    """Make /ready answer 503 once SIGTERM arrives, then let the previous handler (uvicorn's) run.

    Chained with signal.signal rather than loop.add_signal_handler, which would replace uvicorn's
    handler and stop it from shutting down. Signals can only be handled in the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        state.shutting_down = True
        logger.info("SIGTERM received: readiness now 503, finishing in-flight requests")
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    # sse-starlette would cancel open streams on SIGTERM; ours are finite, so let them finish
    # (uvicorn's --timeout-graceful-shutdown still bounds how long).
    AppStatus.disable_automatic_graceful_drain()
    app.state.shutting_down = False
    watch_for_sigterm(app.state)
    if app.state.agent is None:
        app.state.agent = await asyncio.to_thread(
            ResearchAgent, settings
        )  # builds the search index
    if settings.REDIS_URL and app.state.cache is None:
        app.state.cache = ResearchCache(settings.REDIS_URL, settings.CACHE_TTL_SECONDS)
        await app.state.cache.ping()  # logs a warning if Redis is down; we start anyway
    logger.info(
        "research agent ready",
        extra={
            "model": app.state.agent.model_label,
            "search_backend": app.state.agent.search_backend,
            "cache": "redis" if app.state.cache else "disabled",
            "version": settings.APP_VERSION,
        },
    )
    yield
    app.state.shutting_down = True
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
    app.state.settings, app.state.agent, app.state.cache, app.state.shutting_down = (
        settings,
        agent,
        None,
        False,
    )
    app.include_router(router)
    app.add_exception_handler(AppError, app_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.MAX_BODY_BYTES)
    return app
