"""The HTTP API: routes, lifespan and the application factory (dependencies: deps.py)."""

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus

from .agent import ResearchAgent
from .auth import ApiKeys
from .cache import ResearchCache
from .config import Settings, get_settings
from .deps import (
    AgentDep,
    CacheDep,
    GrantDep,
    ServiceDep,
    SettingsDep,
    ShutdownDep,
    StreamGrantDep,
    validation_error_after_the_key,
)
from .errors import NotReadyError, install_error_handlers, responses
from .middleware import install_middleware
from .models import HealthResponse, ReadyResponse, ResearchRequest, ResearchResponse, StreamEvent
from .quotas import Quotas
from .shutdown import Shutdown
from .telemetry import configure_logging
from .tracing import FASTAPI_TELEMETRY, configure_tracing, instrument

logger = logging.getLogger(__name__)


# --- Routes ---------------------------------------------------------------------------------------

# What each error status really sends (400: a body that is not UTF-8; 413: over MAX_BODY_BYTES;
# 401 and 429: research_agent/auth.py and research_agent/quotas.py).
RESEARCH_ERRORS = (400, 401, 413, 414, 422, 429, 500, 502, 503, 504)
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
async def ready(agent: AgentDep, cache: CacheDep, shutdown: ShutdownDep) -> ReadyResponse:
    """Readiness: 503 until the agent is built and again from SIGTERM on. A failing cache is
    reported ("bypassed"), not failed on: the service still answers without it."""
    if shutdown.draining:
        raise NotReadyError("the server is shutting down")
    if cache is not None:
        await cache.probe_if_due()
    return ReadyResponse(
        model=agent.model_label,
        search_backend=agent.search_backend,
        cache=cache.state if cache is not None else "disabled",
    )


@router.post("/v1/research", response_model=ResearchResponse, responses=responses(*RESEARCH_ERRORS))
async def research(body: ResearchRequest, grant: GrantDep, service: ServiceDep) -> dict:
    """Research a question: the agent searches, then answers citing its sources as [1], [2]..."""
    return await service.research(body.query, grant.spend, grant.caller.id)


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
    body: ResearchRequest, grant: StreamGrantDep, service: ServiceDep
) -> SSEResponse:
    """Server-sent events: `token`*, `tool` per search, `final` or `error`, then `data: [DONE]`."""
    events = service.research_events(body.query, grant.spend, grant.caller.id)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **grant.headers}
    return SSEResponse(events, headers=headers)


# --- Lifecycle ------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    # sse-starlette would cancel open streams at once on SIGTERM; ours get the grace and then end
    # with a shutting_down error (research_agent/shutdown.py).
    AppStatus.disable_automatic_graceful_drain()
    app.state.shutdown.install()
    if app.state.agent is None:
        # Builds the search index: off the event loop.
        app.state.agent = await asyncio.to_thread(ResearchAgent, settings)
    if settings.REDIS_URL and app.state.cache is None:
        app.state.cache = ResearchCache(
            settings.REDIS_URL, settings.CACHE_TTL_SECONDS, settings.CACHE_BREAKER_SECONDS
        )
        await app.state.cache.ping()  # logs a warning if Redis is down; we start anyway
    if app.state.quotas is None:
        app.state.quotas = Quotas(settings)
    _log_access(app.state.api_keys, app.state.quotas)
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
    await app.state.quotas.close()
    logger.info("research agent stopped")


def _log_access(api_keys: ApiKeys, quotas: Quotas) -> None:
    if api_keys.enabled:
        logger.info("API keys required", extra={"key_names": api_keys.names})
    else:
        logger.warning(
            "API_KEYS is not set: /v1 is open to anyone who can reach this port",
            extra={"limits_per": "client address"},
        )
    logger.info("limits", extra=quotas.describe())


def _openapi_without_security(app: FastAPI):
    """Without API_KEYS nothing asks for a key, and the schema must not say otherwise."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.get("components", {}).pop("securitySchemes", None)
            for operation in (op for path in schema["paths"].values() for op in path.values()):
                operation.pop("security", None)
                operation["responses"].pop("401", None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def create_app(settings: Settings | None = None, agent: ResearchAgent | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.LOG_LEVEL)
    configure_tracing(settings)  # nothing at all unless OTEL_EXPORTER_OTLP_ENDPOINT is set
    app = FastAPI(
        title="Research Agent",
        version=settings.APP_VERSION,
        description="A LangChain research agent that cites its sources. Offline by default.",
        lifespan=lifespan,
        # A redirect to the path with(out) a slash would carry the client's own Host header back.
        redirect_slashes=False,
        telemetry=FASTAPI_TELEMETRY,  # a server span per request, once tracing is on
    )
    app.state.settings, app.state.agent, app.state.cache = settings, agent, None
    # Read now: a key file that is missing or malformed stops the service before it listens.
    app.state.api_keys, app.state.quotas = ApiKeys.from_settings(settings), None
    # Built once, here; the lifespan installs its SIGTERM handler (a test that never starts the
    # lifespan gets one that is never draining).
    app.state.shutdown = Shutdown(
        settings.SHUTDOWN_DRAIN_SECONDS, settings.GRACEFUL_SHUTDOWN_SECONDS
    )
    app.include_router(router)
    if not app.state.api_keys.enabled:
        app.openapi = _openapi_without_security(app)
    install_error_handlers(app)

    app.add_exception_handler(RequestValidationError, validation_error_after_the_key)
    instrumentator = install_middleware(app, settings)
    instrumentator.expose(
        app,
        include_in_schema=True,
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text exposition format)",
    )
    instrument(app, settings)  # HTTPX, Redis, LangChain: only when tracing is on
    return app
