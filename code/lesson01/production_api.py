"""Lesson 01, the production version: step 5 (code/lesson01/step5_shutdown.py) with what a service
adds.

Run it:  make lesson-01-production

The same routes, request ids, JSON logs, metrics, error shape, deadline and shutdown as step 5
(tests/lesson_01/test_steps.py checks that both answer alike), and, each in docs/01-agent-api.md's
Going further:
  settings      one pydantic-settings class reads every environment variable, typed
  strict input  no silent conversion ("temperature": false is a 422, not 0), a bounded nesting
  body limit    413 before a body over MAX_BODY_BYTES is read
  cache         a bounded TTL cache keyed on every input that changes the answer
  CORS          allowed origins from settings, never a wildcard together with credentials
  OpenAPI       every route declares the errors it sends, in the error shape (schemathesis checks)
"""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from cachetools import TTLCache
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chat_model import make_chat_model
from lesson01.body_limit import BodyLimitMiddleware, PayloadTooLarge, payload_too_large
from lesson01.cors import allow_origins
from lesson01.errors import ERROR_HANDLERS, INTERNAL_ERROR, ModelError, error_body, model_deadline
from lesson01.nesting import limit_nesting
from lesson01.openapi import METRICS_RESPONSE, error_responses
from lesson01.request_context import RequestContextMiddleware, configure_logging, request_id_var
from lesson01.shutdown import EndInTime, ShutdownState


class Settings(BaseSettings):
    """The one place that reads the environment: typed (PORT=abc fails at start), defaults in sight,
    the key printed as **********."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    HOST: str = "127.0.0.1"
    PORT: int = 8000
    LOG_LEVEL: str = "INFO"
    OPENAI_API_KEY: SecretStr = SecretStr("")  # empty: the offline model
    MODEL_NAME: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: int = 20
    REQUEST_TIMEOUT_SECONDS: float = 30.0
    SHUTDOWN_DRAIN_SECONDS: float = 1.0
    GRACEFUL_SHUTDOWN_SECONDS: int = 8
    MAX_BODY_BYTES: int = 65_536  # the longest query fits in any encoding, with room for context
    MAX_QUERY_CHARS: int = 4000
    MAX_TOKENS_LIMIT: int = 4096
    CACHE_MAX_ENTRIES: int = 256  # 0 turns the cache off
    CACHE_TTL_SECONDS: float = 300.0
    CORS_ORIGINS: list[str] = []  # JSON list, e.g. CORS_ORIGINS='["https://app.example.com"]'


settings = Settings()
configure_logging(settings.LOG_LEVEL)
logger = logging.getLogger("agent_api")

registry = CollectorRegistry()
REQUESTS = Counter(
    "http_requests_total", "HTTP requests", ["method", "route", "status"], registry=registry
)
LATENCY = Histogram(
    "http_request_duration_seconds", "To the last byte", ["method", "route"], registry=registry
)
TOKENS = Counter("agent_tokens_total", "Tokens used by the model", ["model"], registry=registry)
CACHE = Counter("agent_cache_requests_total", "Cache lookups", ["result"], registry=registry)


def count(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def deadline() -> float:
    return asyncio.get_running_loop().time() + settings.REQUEST_TIMEOUT_SECONDS


MAX_CONTEXT_DEPTH = 32


class AgentRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # no "false" -> 0, no "5" -> 5

    query: str = Field(
        min_length=1, max_length=settings.MAX_QUERY_CHARS, description="The question for the agent"
    )
    context: dict[str, Any] | None = Field(
        default=None, description="Extra facts the agent may use (nested at most 32 deep)"
    )
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=settings.MAX_TOKENS_LIMIT)

    # A context nested a thousand deep would make json.dumps (the cache key, the prompt) recurse
    # past Python's limit, a 500; refused here, it is a 422.
    @field_validator("context")
    @classmethod
    def bounded_nesting(cls, context: dict[str, Any] | None) -> dict[str, Any] | None:
        return limit_nesting(context, MAX_CONTEXT_DEPTH)


class AgentResponse(BaseModel):
    response: str
    tokens_used: int
    model: str
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
    """lesson01.agent.Agent's two calls, with the request's context and model settings, a cache
    and a token count."""

    def __init__(self, model: BaseChatModel, cache: TTLCache | None = None):
        self.model_name, self.model, self.cache = model.model_name, model, cache
        self.chain = PROMPT | model

    def _chain(self, request: AgentRequest):
        # The request's settings reach the model call; unset ones keep the model's defaults.
        overrides = {"temperature": request.temperature, "max_tokens": request.max_tokens}
        overrides = {name: value for name, value in overrides.items() if value is not None}
        return PROMPT | self.model.bind(**overrides) if overrides else self.chain

    @staticmethod
    def _inputs(request: AgentRequest) -> dict[str, str]:
        context = f"\nContext: {json.dumps(request.context)}" if request.context else ""
        return {"query": request.query, "context": context}

    def _cache_key(self, request: AgentRequest) -> str:
        # Every input that changes the answer is part of the key.
        inputs = [self.model_name, request.query, request.context]
        return json.dumps([*inputs, request.temperature, request.max_tokens], sort_keys=True)

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        started = time.perf_counter()
        key = self._cache_key(request) if self.cache is not None else None
        hit = self.cache.get(key) if key is not None else None
        if key is not None:
            CACHE.labels("miss" if hit is None else "hit").inc()
        if hit is not None:
            text, tokens = hit
        else:
            async with model_deadline(deadline()):
                message = await self._chain(request).ainvoke(self._inputs(request))
            text, tokens = message.text, (message.usage_metadata or {}).get("total_tokens", 0)
            TOKENS.labels(self.model_name).inc(tokens)
            if key is not None:
                self.cache[key] = (text, tokens)
        return AgentResponse(
            response=text,
            tokens_used=tokens,
            model=self.model_name,
            request_id=request_id_var.get(),
            cached=hit is not None,
            latency_ms=round((time.perf_counter() - started) * 1000, 2),
            created_at=datetime.now(UTC),
        )

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        tokens = 0
        async for chunk in self._chain(request).astream(self._inputs(request)):
            tokens = (chunk.usage_metadata or {}).get("total_tokens", tokens)
            if chunk.text:
                yield chunk.text
        TOKENS.labels(self.model_name).inc(tokens)


shutdown = ShutdownState(settings.SHUTDOWN_DRAIN_SECONDS, settings.GRACEFUL_SHUTDOWN_SECONDS)


@asynccontextmanager
async def lifespan(app: FastAPI):
    shutdown.chain_signal_handlers(asyncio.get_running_loop())
    model = make_chat_model(
        openai_api_key=settings.OPENAI_API_KEY.get_secret_value(),
        model_name=settings.MODEL_NAME,
        offline_token_delay_ms=settings.OFFLINE_TOKEN_DELAY_MS,
        timeout_seconds=settings.REQUEST_TIMEOUT_SECONDS,
    )
    cache = TTLCache(settings.CACHE_MAX_ENTRIES, settings.CACHE_TTL_SECONDS)
    app.state.agent = Agent(model, cache if settings.CACHE_MAX_ENTRIES else None)
    logger.info("Started", extra={"fields": {"model": app.state.agent.model_name}})
    yield
    logger.info("Stopped")


app = FastAPI(
    title="Agent API, production version",
    version="1.0.0",
    lifespan=lifespan,
    exception_handlers={**ERROR_HANDLERS, PayloadTooLarge: payload_too_large},
    responses=error_responses(500, named=True),  # any route can fail, a stream's too
)
# Starlette runs the middleware added last first: CORS, then the request id, the shutdown's cut
# and the body limit, each inside the one before.
app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
app.add_middleware(EndInTime, state=shutdown)
app.add_middleware(RequestContextMiddleware, on_done=count)
allow_origins(app, settings.CORS_ORIGINS)


def get_agent(request: Request) -> Agent:
    agent = getattr(request.app.state, "agent", None)
    if agent is None:
        raise HTTPException(status_code=503, detail="Agent not initialised")
    return agent


AgentDep = Annotated[Agent, Depends(get_agent)]


@app.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process answers. It never calls the model."""
    return {"status": "ok"}


@app.get("/ready", responses=error_responses(503))
async def ready(agent: AgentDep) -> dict:
    """Readiness: 200 once the agent exists and until SIGTERM, 503 otherwise."""
    if shutdown.draining:
        raise HTTPException(status_code=503, detail="The server is shutting down")
    return {"ready": True, "model": agent.model_name}


@app.get("/metrics", response_class=PlainTextResponse, responses={200: METRICS_RESPONSE})
async def metrics() -> str:
    return generate_latest(registry).decode()


@app.post("/v1/invoke", responses=error_responses(400, 413, 422, 502, 503, 504))
async def invoke(request: AgentRequest, agent: AgentDep) -> AgentResponse:
    return await agent.invoke(request)


@app.post(
    "/v1/stream",
    response_class=EventSourceResponse,
    responses=error_responses(400, 413, 422, 503, named=True),
)
async def stream(request: AgentRequest, agent: AgentDep) -> AsyncIterable[ServerSentEvent]:
    """A `data:` event per token, then `data: [DONE]`; a failure sends an `error` event first."""
    tokens, ends = agent.stream(request), deadline()
    try:
        while True:
            async with model_deadline(ends):  # cuts a wait for the model, never our own yield
                token = await anext(tokens, None)
            if token is None:
                break
            yield ServerSentEvent(raw_data=token)
    except ModelError as exc:  # the 200 is sent already: a failure can only be one more event
        yield ServerSentEvent(event="error", data=error_body(exc.error_type, str(exc)))
    except Exception:
        logger.exception("Streaming failed")
        yield ServerSentEvent(event="error", data=error_body(*INTERNAL_ERROR))
    yield ServerSentEvent(raw_data="[DONE]")


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.GRACEFUL_SHUTDOWN_SECONDS,
    )
