"""Lesson 01, step 2: the same agent API with production habits.

Run it:  python code/01_production_api.py     (or: make lesson-01-production)

What step 1 lacked, in the order this file adds it:
  settings      one pydantic-settings class reads every environment variable
  logs          one JSON object per line, each carrying the request id
  request ids   X-Request-ID is taken from the caller or generated, and returned on every response
  metrics       Prometheus counters and histograms at /metrics, labelled by route template
  errors        one JSON error shape: 422 bad input, 502 model failure, 504 timeout, 500 anything else
  cache         a bounded TTL cache keyed on every input that changes the answer
  CORS          allowed origins from settings, never a wildcard together with credentials
"""

import asyncio
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import openai
import uvicorn
from cachetools import TTLCache
from chat_model import make_chat_model
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.exceptions import HTTPException as StarletteHTTPException

# Our streams always end, so let them finish on shutdown instead of sse-starlette cutting them off.
AppStatus.disable_automatic_graceful_drain()


# === Settings: the only place that reads the environment ===


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    APP_NAME: str = "agent-api"
    APP_VERSION: str = "1.0.0"
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    LOG_LEVEL: str = "INFO"
    OPENAI_API_KEY: SecretStr | None = None
    MODEL_NAME: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: int = 20
    REQUEST_TIMEOUT_SECONDS: float = 30.0
    MAX_QUERY_CHARS: int = 4000
    MAX_TOKENS_LIMIT: int = 4096
    CACHE_MAX_ENTRIES: int = 256  # 0 turns the cache off
    CACHE_TTL_SECONDS: float = 300.0
    CORS_ORIGINS: list[str] = []  # JSON list, e.g. CORS_ORIGINS='["https://app.example.com"]'


settings = Settings()


# === Logs: one JSON object per line, with the request id of the request being served ===

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


logger = logging.getLogger("agent_api")


# === Metrics: a registry of our own, so importing this file twice never registers a metric twice ===

registry = CollectorRegistry()
REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
)
LATENCY = Histogram(
    "http_request_duration_seconds", "HTTP request latency", ["method", "route"], registry=registry
)
TOKENS = Counter("agent_tokens_total", "Tokens used by the model", ["model"], registry=registry)
CACHE = Counter(
    "agent_cache_requests_total", "Response cache lookups", ["result"], registry=registry
)

REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestContextMiddleware:
    """Request id, access log and metrics for every request, as plain ASGI (no per-request task or copy)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if REQUEST_ID_PATTERN.fullmatch(incoming) else uuid.uuid4().hex
        request_id_var.set(request_id)
        started = time.perf_counter()
        status: int | None = None  # set when the app starts its response

        async def send_with_request_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            # Anything no handler caught: log it with its traceback, tell the client nothing internal.
            logger.exception("Unhandled error")
            if (
                status is not None
            ):  # the response had already started; all we can do is drop the connection
                raise
            response = error_response(500, "internal_error", "An unexpected error occurred")
            await response(scope, receive, send_with_request_id)
        finally:
            # A route template such as /v1/invoke, never the raw path: unknown paths share one series.
            route = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            status = status or 500
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "fields": {
                        "method": scope["method"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    }
                },
            )


# === Errors: one JSON shape for all of them ===


def error_response(status_code: int, error_type: str, message: str, **extra: Any) -> JSONResponse:
    body = {
        "error": {
            "type": error_type,
            "message": message,
            "request_id": request_id_var.get(),
            **extra,
        }
    }
    return JSONResponse(body, status_code=status_code)


class UpstreamError(Exception):
    """The model provider failed or timed out; the route turns it into a 502 or 504."""

    def __init__(self, status_code: int, error_type: str, message: str):
        self.status_code, self.error_type, self.message = status_code, error_type, message


# === Request and response bodies ===


class AgentRequest(BaseModel):
    query: str = Field(min_length=1, max_length=settings.MAX_QUERY_CHARS)
    context: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=settings.MAX_TOKENS_LIMIT)


class AgentResponse(BaseModel):
    request_id: str
    response: str
    tokens_used: int
    model: str
    cached: bool
    latency_ms: float
    created_at: datetime


# === The agent: a chain, a cache and a timeout ===

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a helpful assistant. Be concise and accurate.{context}"),
        ("human", "{query}"),
    ]
)


class ProductionAgent:
    def __init__(self, model: BaseChatModel, timeout_seconds: float, cache: TTLCache | None):
        self.model = model
        self.model_name = model.model_name
        self.timeout_seconds = timeout_seconds
        self.cache = cache
        self.default_chain = PROMPT | model

    def _chain(self, request: AgentRequest):
        # Request settings reach the model call itself; unset ones keep the model's defaults.
        overrides = {
            k: v
            for k, v in {
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
            }.items()
            if v is not None
        }
        return PROMPT | self.model.bind(**overrides) if overrides else self.default_chain

    @staticmethod
    def _inputs(request: AgentRequest) -> dict[str, str]:
        context = (
            f"\nContext: {json.dumps(request.context, sort_keys=True)}" if request.context else ""
        )
        return {"query": request.query, "context": context}

    def _cache_key(self, request: AgentRequest) -> str:
        # Every input that changes the answer is part of the key.
        return json.dumps(
            [
                self.model_name,
                request.query,
                request.context,
                request.temperature,
                request.max_tokens,
            ],
            sort_keys=True,
        )

    async def invoke(self, request: AgentRequest) -> tuple[str, int, bool]:
        key = self._cache_key(request) if self.cache is not None else None
        if key is not None:
            if key in self.cache:
                CACHE.labels("hit").inc()
                text, tokens = self.cache[key]
                return text, tokens, True
            CACHE.labels("miss").inc()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                message = await self._chain(request).ainvoke(self._inputs(request))
        except (TimeoutError, openai.APITimeoutError):
            raise UpstreamError(
                504, "timeout", f"The model did not answer within {self.timeout_seconds:g}s"
            )
        except openai.APIError as exc:
            logger.warning("Model provider failed: %s", exc)
            raise UpstreamError(502, "upstream_error", "The model provider failed")
        tokens = (message.usage_metadata or {}).get("total_tokens", 0)
        TOKENS.labels(self.model_name).inc(tokens)
        if key is not None:
            self.cache[key] = (message.text, tokens)
        return message.text, tokens, False

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        tokens = 0
        async with asyncio.timeout(self.timeout_seconds):
            async for chunk in self._chain(request).astream(self._inputs(request)):
                tokens = (chunk.usage_metadata or {}).get("total_tokens", tokens)
                if chunk.text:
                    yield chunk.text
        TOKENS.labels(self.model_name).inc(tokens)


# === The application ===


@asynccontextmanager
async def lifespan(app: FastAPI):
    configure_logging(settings.LOG_LEVEL)
    api_key = settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None
    model = make_chat_model(
        api_key,
        settings.MODEL_NAME,
        settings.OFFLINE_TOKEN_DELAY_MS,
        settings.REQUEST_TIMEOUT_SECONDS,
    )
    cache = (
        TTLCache(settings.CACHE_MAX_ENTRIES, settings.CACHE_TTL_SECONDS)
        if settings.CACHE_MAX_ENTRIES
        else None
    )
    app.state.agent = ProductionAgent(model, settings.REQUEST_TIMEOUT_SECONDS, cache)
    app.state.started = time.monotonic()
    logger.info(
        "Started", extra={"fields": {"version": settings.APP_VERSION, "model": model.model_name}}
    )
    yield
    logger.info("Stopped")


app = FastAPI(title=settings.APP_NAME, version=settings.APP_VERSION, lifespan=lifespan)
if settings.CORS_ORIGINS:
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.CORS_ORIGINS,
        # Browsers refuse credentials with a wildcard origin; allowing both would be a misconfiguration.
        allow_credentials="*" not in settings.CORS_ORIGINS,
        allow_methods=["GET", "POST"],
        allow_headers=["Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"],
    )
app.add_middleware(RequestContextMiddleware)


@app.exception_handler(StarletteHTTPException)  # also covers the 404s and 405s the router raises
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = {404: "not_found", 405: "method_not_allowed", 503: "not_ready"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, error_type, str(exc.detail))


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [
        {"field": ".".join(map(str, e["loc"][1:])), "message": e["msg"]} for e in exc.errors()
    ]
    return error_response(422, "validation_error", "The request body is invalid", details=details)


@app.exception_handler(UpstreamError)
async def upstream_error(request: Request, exc: UpstreamError) -> JSONResponse:
    return error_response(exc.status_code, exc.error_type, exc.message)


def get_agent(request: Request) -> ProductionAgent:
    agent = getattr(request.app.state, "agent", None)
    if agent is None:
        raise HTTPException(status_code=503, detail="Agent not initialised")
    return agent


AgentDep = Annotated[ProductionAgent, Depends(get_agent)]


@app.get("/health")
async def health(request: Request) -> dict[str, Any]:
    started = getattr(request.app.state, "started", time.monotonic())
    return {
        "status": "ok",
        "version": settings.APP_VERSION,
        "uptime_seconds": round(time.monotonic() - started, 1),
    }


@app.get("/ready")
async def ready(agent: AgentDep) -> dict[str, Any]:
    return {"ready": True, "model": agent.model_name}


@app.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@app.post("/v1/invoke")
async def invoke(request: AgentRequest, agent: AgentDep) -> AgentResponse:
    started = time.perf_counter()
    text, tokens, cached = await agent.invoke(request)
    return AgentResponse(
        request_id=request_id_var.get(),
        response=text,
        tokens_used=tokens,
        model=agent.model_name,
        cached=cached,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        created_at=datetime.now(UTC),
    )


@app.post("/v1/stream")
async def stream(request: AgentRequest, agent: AgentDep) -> EventSourceResponse:
    """`data:` events with tokens, then `data: [DONE]`; a failure ends the stream with an `error` event."""

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for token in agent.stream(request):
                yield {"data": token}
        except (TimeoutError, openai.APITimeoutError):
            yield {
                "event": "error",
                "data": error_body("timeout", "The model did not finish in time"),
            }
            return
        except openai.APIError:
            logger.warning("Model provider failed while streaming", exc_info=True)
            yield {
                "event": "error",
                "data": error_body("upstream_error", "The model provider failed"),
            }
            return
        except Exception:
            logger.exception("Streaming failed")
            yield {
                "event": "error",
                "data": error_body("internal_error", "An unexpected error occurred"),
            }
            return
        yield {"data": "[DONE]"}

    return EventSourceResponse(events())


def error_body(error_type: str, message: str) -> str:
    return json.dumps(
        {"error": {"type": error_type, "message": message, "request_id": request_id_var.get()}}
    )


if __name__ == "__main__":
    # log_config=None leaves logging to configure_logging(), so uvicorn's own lines are JSON too;
    # access_log=False because RequestContextMiddleware already logs every request.
    uvicorn.run(app, host=settings.HOST, port=settings.PORT, log_config=None, access_log=False)
