"""Lesson 01, step 2: the same agent API with production habits.

Run it:  python code/01_production_api.py     (or: make lesson-01-production)
Diff it: diff code/01_basic_api.py code/01_production_api.py

What step 1 lacked, in file order; each block is marked `NEW in step 2`:
  settings      one pydantic-settings class reads every environment variable
  logs          one JSON object per line, each carrying the request id
  errors        one JSON error shape for every failure, and an OpenAPI document that says so
  metrics       Prometheus counters and histograms at /metrics, labelled by route template
  middleware    request ids, the access log, metrics, and a body size limit (413 before reading)
  strict input  no silent type conversion: "temperature": false is a 422, not 0
  timeouts      a deadline on every model call: 504 when it runs out, 502 when the provider fails
  cache         a bounded TTL cache keyed on every input that changes the answer
  CORS          allowed origins from settings, never a wildcard together with credentials
How some of them work is in modules next to this file, named after their topic: the middleware
and log format (lesson01.request_context), the OpenAPI models, the deadline, nesting, CORS.
"""

import json
import logging
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from cachetools import TTLCache
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
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
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus
from starlette.exceptions import HTTPException as StarletteHTTPException

from chat_model import make_chat_model
from lesson01.cors import allow_origins
from lesson01.deadline import UpstreamError, model_deadline
from lesson01.nesting import limit_nesting
from lesson01.openapi import METRICS_RESPONSE, error_responses
from lesson01.request_context import JsonFormatter, RequestContextMiddleware, request_id_var

# Our streams always end, so let them finish on shutdown instead of sse-starlette cutting them off.
AppStatus.disable_automatic_graceful_drain()

APP_VERSION = "1.0.0"


# NEW in step 2: settings. The one place that reads the environment, typed, defaults in sight.
class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    HOST: str = "127.0.0.1"
    PORT: int = 8000
    LOG_LEVEL: str = "INFO"
    OPENAI_API_KEY: SecretStr = SecretStr("")  # empty: the offline model
    MODEL_NAME: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: int = 20
    REQUEST_TIMEOUT_SECONDS: float = 30.0
    MAX_BODY_BYTES: int = 65_536  # the longest query fits in any encoding, with room for context
    MAX_QUERY_CHARS: int = 4000
    MAX_TOKENS_LIMIT: int = 4096
    CACHE_MAX_ENTRIES: int = 256  # 0 turns the cache off
    CACHE_TTL_SECONDS: float = 300.0
    CORS_ORIGINS: list[str] = []  # JSON list, e.g. CORS_ORIGINS='["https://app.example.com"]'


settings = Settings()


# NEW in step 2: JSON logs. One object per line, with the id of the request being served.
def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


configure_logging(settings.LOG_LEVEL)
logger = logging.getLogger("agent_api")


# NEW in step 2: one error shape, {"error": {"type", "message", "request_id", ...}}, for all errors.
INTERNAL_ERROR_MESSAGE = "Internal server error"  # a 500 says no more: the traceback is logged


def error_body(error_type: str, message: str, *, request_id: str | None = None, **extra) -> dict:
    request_id = request_id or request_id_var.get()  # the id this request was logged under
    return {"error": {"type": error_type, "message": message, "request_id": request_id, **extra}}


def error_response(
    status_code: int, error_type: str, message: str, headers: dict | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse(
        error_body(error_type, message, **extra), status_code=status_code, headers=headers
    )


# NEW in step 2: metrics, in a registry of our own, so importing this file twice is harmless.
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


MAX_CONTEXT_DEPTH = 32


class AgentRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # NEW in step 2: no "false" → 0, no "5" → 5

    query: str = Field(
        min_length=1, max_length=settings.MAX_QUERY_CHARS, description="The question for the agent"
    )
    context: dict[str, Any] | None = Field(
        default=None, description="Extra facts the agent may use (nested at most 32 deep)"
    )
    # NEW in step 2: model settings per request
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=settings.MAX_TOKENS_LIMIT)

    # NEW in step 2: a context nested a thousand deep would make json.dumps (the cache key, the
    # prompt) recurse past Python's limit, a 500; refuse it here as a 422 instead.
    @field_validator("context")
    @classmethod
    def bounded_nesting(cls, context: dict[str, Any] | None) -> dict[str, Any] | None:
        return limit_nesting(context, MAX_CONTEXT_DEPTH)


class AgentResponse(BaseModel):
    response: str
    tokens_used: int
    model: str
    # NEW in step 2: what a caller needs to trace an answer
    request_id: str
    cached: bool
    latency_ms: float
    created_at: datetime


PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "You are a helpful assistant. Be concise and accurate.{context}"),
        ("human", "{query}"),
    ]
)


class Agent:
    """A prompt and a chat model; the API below only talks to this class."""

    def __init__(
        self,
        model: BaseChatModel,
        timeout_seconds: float | None = None,
        cache: TTLCache | None = None,
    ):
        self.model_name = model.model_name
        self.chain = PROMPT | model
        # NEW in step 2: per-request model settings, a deadline and a cache
        self.model = model
        self.timeout_seconds = timeout_seconds
        self.cache = cache

    @staticmethod
    def _inputs(request: AgentRequest) -> dict[str, str]:
        context = f"\nContext: {json.dumps(request.context)}" if request.context else ""
        return {"query": request.query, "context": context}

    # NEW in step 2: the chain for one request and its cache key
    def _chain(self, request: AgentRequest):
        # Request settings reach the model call itself; unset ones keep the model's defaults.
        overrides = {"temperature": request.temperature, "max_tokens": request.max_tokens}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        return PROMPT | self.model.bind(**overrides) if overrides else self.chain

    def _cache_key(self, request: AgentRequest) -> str:
        # Every input that changes the answer is part of the key.
        inputs = [self.model_name, request.query, request.context]
        return json.dumps([*inputs, request.temperature, request.max_tokens], sort_keys=True)

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        started = time.perf_counter()  # NEW in step 2: latency, cache, deadline, token metric
        key = self._cache_key(request) if self.cache is not None else None
        if key is not None:
            if key in self.cache:
                CACHE.labels("hit").inc()
                return self.cache[key].model_copy(
                    update={
                        "request_id": request_id_var.get(),
                        "cached": True,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
                        "created_at": datetime.now(UTC),
                    }
                )
            CACHE.labels("miss").inc()
        async with model_deadline(self.timeout_seconds):
            message = await self._chain(request).ainvoke(self._inputs(request))
        usage = message.usage_metadata or {}
        TOKENS.labels(self.model_name).inc(usage.get("total_tokens", 0))
        response = AgentResponse(
            response=message.text,
            tokens_used=usage.get("total_tokens", 0),
            model=self.model_name,
            request_id=request_id_var.get(),
            cached=False,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            created_at=datetime.now(UTC),
        )
        if key is not None:
            self.cache[key] = response
        return response

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        tokens = 0  # NEW in step 2: deadline and token metric
        async with model_deadline(self.timeout_seconds):
            async for chunk in self._chain(request).astream(self._inputs(request)):
                tokens = (chunk.usage_metadata or {}).get("total_tokens", tokens)
                if chunk.text:
                    yield chunk.text
        TOKENS.labels(self.model_name).inc(tokens)


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Startup: build the agent once, before the first request.
    app.state.agent = Agent(
        make_chat_model(
            openai_api_key=settings.OPENAI_API_KEY.get_secret_value(),
            model_name=settings.MODEL_NAME,
            offline_token_delay_ms=settings.OFFLINE_TOKEN_DELAY_MS,
            timeout_seconds=settings.REQUEST_TIMEOUT_SECONDS,
        ),
        timeout_seconds=settings.REQUEST_TIMEOUT_SECONDS,
        cache=TTLCache(settings.CACHE_MAX_ENTRIES, settings.CACHE_TTL_SECONDS)
        if settings.CACHE_MAX_ENTRIES
        else None,
    )
    logger.info("Started", extra={"fields": {"model": app.state.agent.model_name}})
    yield
    # Shutdown: nothing to close; a connection pool or an HTTP client would be closed at this point.
    logger.info("Stopped")


app = FastAPI(
    title="Production agent API",
    version=APP_VERSION,
    lifespan=lifespan,
    responses=error_responses(500),  # NEW in step 2: any route can fail
)

# NEW in step 2: CORS, the request context, and one handler per kind of error
allow_origins(app, settings.CORS_ORIGINS)
app.add_middleware(
    RequestContextMiddleware,  # request id, body limit, access log and metrics for every request
    max_body_bytes=settings.MAX_BODY_BYTES,
    requests=REQUESTS,
    latency=LATENCY,
    internal_error=lambda: error_response(500, "internal_error", INTERNAL_ERROR_MESSAGE),
)

HTTP_ERROR_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    503: "not_ready",
}


@app.exception_handler(StarletteHTTPException)  # also the 404s and 405s the router raises
async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    # exc.headers carries e.g. the Allow header of a 405.
    return error_response(exc.status_code, error_type, str(exc.detail), headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return error_response(422, "validation_error", "The request body is invalid", details=details)


@app.exception_handler(UpstreamError)
async def upstream_error(request: Request, exc: UpstreamError) -> JSONResponse:
    return error_response(exc.status_code, exc.error_type, exc.message)


def get_agent(request: Request) -> Agent:
    agent = getattr(request.app.state, "agent", None)
    if agent is None:
        raise HTTPException(status_code=503, detail="Agent not initialised")
    return agent


AgentDep = Annotated[Agent, Depends(get_agent)]


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. Says nothing about whether the agent is usable."""
    return {"status": "ok", "version": APP_VERSION}


@app.get("/ready", responses=error_responses(503))
async def ready(agent: AgentDep) -> dict[str, Any]:
    """Readiness: 200 once the agent exists, 503 (from get_agent) before that."""
    return {"ready": True, "model": agent.model_name}


@app.get("/metrics", response_class=Response, responses={200: METRICS_RESPONSE})
async def metrics() -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@app.post("/v1/invoke", responses=error_responses(400, 413, 422, 502, 503, 504))
async def invoke(request: AgentRequest, agent: AgentDep) -> AgentResponse:
    return await agent.invoke(request)


# FastAPI would document the stream as JSON; this says what it really sends, event by event.
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-Sent Events: `data:` per token, or an `error`, then `data: [DONE]`",
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"enum": ["message", "error"]},
                        "data": {"type": "string"},
                    },
                    "required": ["data"],
                }
            }
        },
    }
}


@app.post(
    "/v1/stream",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, **error_responses(400, 413, 422, 503)},
)
async def stream(request: AgentRequest, agent: AgentDep) -> EventSourceResponse:
    """One `data:` event per token, then `data: [DONE]`; a failure sends an `error` event first."""

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for token in agent.stream(request):
                yield {"data": token}
        except UpstreamError as exc:  # NEW in step 2: the same error shape, inside the stream
            yield {"event": "error", "data": json.dumps(error_body(exc.error_type, exc.message))}
        except Exception:
            logger.exception("Streaming failed")
            yield {
                "event": "error",
                "data": json.dumps(error_body("internal_error", INTERNAL_ERROR_MESSAGE)),
            }
        yield {"data": "[DONE]"}

    return EventSourceResponse(events())


if __name__ == "__main__":
    # log_config=None leaves logging to configure_logging(), so uvicorn's own lines are JSON too;
    # access_log=False because RequestContextMiddleware already logs every request.
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        access_log=False,
    )
