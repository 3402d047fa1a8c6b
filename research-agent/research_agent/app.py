"""The application factory: lesson 02's routes (research_agent/api.py) with every later layer
attached, in this one place. Each layer lives in a folder or a module named after it:

- settings.py: `Settings`, the one class the service reads: the agent's own settings, and each
  layer's settings class as a field (`settings.cache`, `settings.access`...);
- web/, observability/: the error shape, request ids, metrics, the access log, the body limit
  (middleware);
- access/: API keys, rate limits, token budgets, stream caps (dependencies of the research routes,
  deps.py; the key is checked before the body), each run's tokens counted and charged (around the
  agent's runs, access/usage.py);
- cache.py: the Redis cache and whose answers a caller may get (the service's cache, deps.py);
- web/shutdown.py, until_cut.py: the drain, the grace and the cut (the lifespan's SIGTERM handler,
  /ready; around the agent's runs);
- tools.py: lesson 04's run_python, lesson 08's MCP search, the tool-call metric (the agent's tools
  and middleware);
- tracing/: lesson 09's spans (FastAPI's server spans, instrumentation).
"""

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse

from . import api
from .access.key_before_body import KeyBeforeBodyMiddleware
from .access.keys import ApiKeys
from .access.quotas import Quotas
from .agent import ResearchAgent
from .cache import ResearchCache
from .deps import admit, count_streams, validation_error_after_the_key
from .observability.metrics import REQUESTS_REJECTED, configure_logging
from .settings import Settings, get_settings
from .tools import build_agent
from .tracing.otel import FASTAPI_TELEMETRY, configure_tracing, instrument
from .web.error_shape import install_shape_handlers
from .web.errors import count_rejections
from .web.middleware import install_middleware
from .web.shutdown import NotReadyWhileDraining, Shutdown

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    app.state.shutdown.install()
    if app.state.agent is None:
        # Builds the search index: off the event loop.
        app.state.agent = await asyncio.to_thread(build_agent, settings)
    if settings.cache.REDIS_URL and app.state.cache is None:
        app.state.cache = ResearchCache(
            settings.cache.REDIS_URL,
            settings.cache.CACHE_TTL_SECONDS,
            settings.cache.CACHE_BREAKER_SECONDS,
        )
        await app.state.cache.ping()  # logs a warning if Redis is down; we start anyway
    if app.state.quotas is None:
        app.state.quotas = Quotas(settings.access, settings.cache, settings.REQUEST_TIMEOUT_SECONDS)
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
    configure_logging(settings.server.LOG_LEVEL)
    configure_tracing(settings.tracing)  # nothing at all unless OTEL_EXPORTER_OTLP_ENDPOINT is set
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
    app.state.api_keys, app.state.quotas = ApiKeys.from_settings(settings.access), None
    # Built once, here; the lifespan installs its SIGTERM handler (a test that never starts the
    # lifespan gets one that is never draining).
    app.state.shutdown = Shutdown(
        settings.shutdown.SHUTDOWN_DRAIN_SECONDS, settings.shutdown.GRACEFUL_SHUTDOWN_SECONDS
    )
    # Lesson 02's routes, each research route behind the caller's key and limits; their service
    # has every layer around the agent (deps.get_service).
    app.include_router(api.probes)
    app.include_router(api.router, dependencies=[Depends(admit), Depends(count_streams)])
    if not app.state.api_keys.enabled:
        app.openapi = _openapi_without_security(app)
    # The course's error shape; the access log's middleware answers the 500 (web/middleware.py).
    install_shape_handlers(app, unforeseen=False, count=count_rejections(REQUESTS_REJECTED))

    app.add_exception_handler(RequestValidationError, validation_error_after_the_key)
    app.add_middleware(NotReadyWhileDraining)
    instrumentator = install_middleware(
        app, settings.server.MAX_BODY_BYTES, key_check=KeyBeforeBodyMiddleware
    )
    instrumentator.expose(
        app,
        include_in_schema=True,
        response_class=PlainTextResponse,
        summary="Prometheus metrics (text exposition format)",
    )
    instrument(app, settings.tracing)  # HTTPX, Redis, LangChain: only when tracing is on
    return app
