"""Lesson 07: the gateway, the only HTTP part of the event-driven agents (07_event_agents.py).

    POST /v1/questions            publish to learning.requests, answer 202 {"id"} at once
    GET  /v1/questions/{id}       pending | answered | failed, the route, the answer, the attempts
    GET  /v1/students/{id}/progress   the progress agent's state

It calls no agent: it publishes an event and reads the state the agents stored. Run it with
`python code/07_gateway.py` (REDIS_URL, HOST, PORT), or `make lesson-07` for the whole system.
"""

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import redis.asyncio as redis
import uvicorn
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from lesson07 import contract

# The topics, the envelope, the Redis layout and how progress is read have one owner:
# lesson07.contract. The error shape, the body limit and the request-id rule are the research
# agent's (its installed `research_agent` package).
from lesson07.tracing import FASTAPI_TELEMETRY, instrument_gateway, trace_context
from research_agent import (
    ApiError,
    BodyLimitMiddleware,
    ErrorResponse,
    error_body,
    install_shape_handlers,
    log_with_request_ids,
    safe_request_id,
)

log_with_request_ids(force=True)
logger = logging.getLogger("gateway")

StudentId = Annotated[str, Field(pattern=rf"^{contract.STUDENT_ID}$")]
QuestionId = Annotated[str, PathParam(pattern=rf"^{contract.QUESTION_ID}$")]

ACCEPTED = Counter("questions_accepted_total", "Questions published to learning.requests")
REFUSED = Counter("questions_refused_total", "Questions not admitted", ["reason"])
BACKLOG = Gauge("topic_pending_messages", "Delivered, not yet acked", ["topic", "group"])
LAG = Gauge("topic_unread_messages", "Not yet delivered to the group", ["topic", "group"])
DEAD = Gauge("topic_deadletter_messages", "Messages in the dead-letter topic", ["topic"])
GROUPS = {
    contract.LEARNING: "triage",
    **{t: k for k, t in contract.SPECIALIST_TOPICS.items()},
    contract.PROGRESS: "progress",
}

# The question's record, its event and (for a new student) the student's token hash, all at once.
# KEYS: student, question, learning topic. ARGV: token hash, record fields (JSON), event, ttl,
# maxlen. -1: the student has another token. 1: published. 2: published, and the student is new.
# A question that exists already (the same call retried after its reply was lost, or the same
# Idempotency-Key) publishes nothing: 0, or 3 if that question enrolled the student.
PUBLISH = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then
  if redis.call('HGET', KEYS[2], 'enrolled') == '1' then return 3 end
  return 0
end
local record = cjson.decode(ARGV[2])
if not owner then redis.call('SET', KEYS[1], ARGV[1]); record['enrolled'] = '1' end
local fields = {}
for field, value in pairs(record) do table.insert(fields, field); table.insert(fields, value) end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'data', ARGV[3])
if owner then return 1 end
return 2
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_id: StudentId
    # A lone surrogate (JSON's \ud800) is refused by pydantic already: a 422, never published.
    text: str = Field(min_length=1, max_length=4000)


class Accepted(BaseModel):
    id: str
    student_token: str | None = Field(
        default=None,
        description="only with a student's first question: send it as `Authorization: Bearer` "
        "for the student's next questions, their answers and progress",
    )


class QuestionView(BaseModel):
    id: str
    status: Literal["pending", "answered", "failed"]
    route: Literal["concepts", "debug", "exercise"] | None
    answer: str | None
    attempts: int
    error: str | None = None


class Progress(BaseModel):
    student_id: str
    questions: int = Field(description="questions of this student the progress agent counted")
    streak: int = Field(description="days in a row with at least one question")
    topics: dict[str, int]
    kinds: dict[str, int]
    struggles: dict[str, int] = Field(description="debug requests per topic")
    alerts: list[str] = Field(description="topics a struggle alert was published for")


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: contract.GatewaySettings = app.state.settings
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    app.state.redis = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            settings.redis_url,
            password=password,
            max_connections=50,
            timeout=5,
            decode_responses=True,
            socket_connect_timeout=3,
            # A connection Redis closed (a restart, CLIENT KILL) is replaced, and the command sent
            # again: every command here is a read or idempotent (PUBLISH checks the question id).
            retry=Retry(ExponentialBackoff(cap=1, base=0.1), 3),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )
    )
    app.state.publish = app.state.redis.register_script(PUBLISH)
    storage = RedisStorage(
        "async+" + settings.redis_url,
        implementation="redispy",  # the `redis` package we pin, not coredis
        key_prefix="lesson07:asks",
        wrap_exceptions=True,
        connection_pool=app.state.redis.connection_pool,
    )
    app.state.limiter = MovingWindowRateLimiter(storage)
    yield
    await app.state.redis.aclose()


bearer = HTTPBearer(auto_error=False, description="the `student_token` of the student")
Token = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def check_student(request: Request, student_id: str, credentials: Token) -> None:
    """Only the student's own token reads what belongs to the student."""
    if credentials is None:
        message = "send the student's student_token as `Authorization: Bearer <token>`"
        raise ApiError(401, "student_token_missing", message, {"WWW-Authenticate": "Bearer"})
    stored = await request.app.state.redis.get(contract.student_key(student_id))
    if stored is None or not hmac.compare_digest(stored, token_hash(credentials.credentials)):
        raise ApiError(403, "not_this_student", "this is not the token of that student")


async def admit(request: Request, student_id: str) -> None:
    """429 past ASKS_PER_MINUTE for one student, 503 past MAX_BACKLOG unanswered questions."""
    settings: contract.GatewaySettings = request.app.state.settings
    per_minute = RateLimitItemPerMinute(settings.asks_per_minute)
    if not await request.app.state.limiter.hit(per_minute, student_id):
        REFUSED.labels("rate").inc()
        message = f"at most {settings.asks_per_minute} questions a minute per student"
        raise ApiError(429, "rate_limited", message, {"Retry-After": "60"})
    pipe = request.app.state.redis.pipeline(transaction=False)
    topics = [contract.LEARNING, *contract.SPECIALIST_TOPICS.values()]
    for topic in topics:
        pipe.xinfo_groups(topic)
        pipe.xlen(topic)
    replies = await pipe.execute(raise_on_error=False)
    backlog = 0
    for topic, groups, length in zip(topics, replies[::2], replies[1::2], strict=True):
        mine = [g for g in groups if g["name"] == GROUPS[topic]] if isinstance(groups, list) else []
        # No group yet (its agent never started): it will read the whole topic.
        backlog += mine[0]["pending"] + (mine[0].get("lag") or 0) if mine else length
    if backlog >= settings.max_backlog:
        REFUSED.labels("backlog").inc()
        message = f"{backlog} questions are waiting (MAX_BACKLOG is {settings.max_backlog})"
        raise ApiError(503, "busy", message, {"Retry-After": "5"})


class HostCheck:
    """400 in the error shape for a Host header not in ALLOWED_HOSTS: a page on another site cannot
    reach the gateway through a DNS name rebound to 127.0.0.1."""

    def __init__(self, app, hosts: set[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "").rsplit(":", 1)[0].strip("[]")
            if host not in self.hosts:
                body = error_body("invalid_host", "this Host is not served here")
                await JSONResponse(body, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(settings: contract.GatewaySettings | None = None) -> FastAPI:
    settings = settings or contract.GatewaySettings()
    app = FastAPI(
        title="Event-driven learning assistant", lifespan=lifespan, telemetry=FASTAPI_TELEMETRY
    )
    app.state.settings = settings
    # Neither a Host that is not ours nor a body over the limit reaches a route.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    hosts = {h.strip() for h in settings.allowed_hosts.split(",") if h.strip()}
    app.add_middleware(HostCheck, hosts=hosts)
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        validator=None,
        transformer=safe_request_id,
    )
    errors = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 422, 429, 503)}

    install_shape_handlers(app)

    @app.exception_handler(redis.RedisError)
    @app.exception_handler(StorageError)  # the rate limiter's Redis
    async def redis_down(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("Redis failed: %r", exc)
        body = error_body("redis_unavailable", "Redis is not answering", retryable=True)
        return JSONResponse(body, 503, headers={"Retry-After": "2"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(request: Request) -> dict:
        await request.app.state.redis.ping()  # a RedisError becomes the 503 above
        return {"status": "ready"}

    @app.post("/v1/questions", status_code=202, responses=errors)
    async def ask(
        question: Question,
        request: Request,
        credentials: Token,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> Accepted:
        """Publish the question; the agents answer it in the background. With an Idempotency-Key,
        the same key for the same student is the same question, however often it is sent."""
        r = request.app.state.redis
        await admit(request, question.student_id)
        new_token = None if credentials else secrets.token_urlsafe(32)
        token = credentials.credentials if credentials else new_token
        if idempotency_key:
            seed = f"{question.student_id}\n{idempotency_key}".encode()
            question_id = hashlib.sha256(seed).hexdigest()[:32]
        else:
            question_id = uuid.uuid4().hex
        event = contract.envelope(
            question_id,
            "/lesson07/gateway",
            "learning.question.asked",
            {"question_id": question_id, **question.model_dump()},
            **trace_context(),  # the request's span: the agents' spans join its trace
        )
        record = {
            "student_id": question.student_id,
            "status": "pending",
            "attempts": 0,
            "asked_at": f"{time.time():.3f}",
        }
        keys = [
            contract.student_key(question.student_id),
            contract.question_key(question_id),
            contract.LEARNING,
        ]
        args = [
            token_hash(token),
            json.dumps(record),
            json.dumps(event),
            settings.question_ttl_seconds,
            settings.topic_maxlen,
        ]
        try:  # the client's retries (below) send the same script again: it publishes once
            done = await request.app.state.publish(keys=keys, args=args)
        except (redis.ConnectionError, redis.TimeoutError):
            # The script may have run and only its reply been lost: a question that is in Redis
            # was published, and is answered 202, not 503 (a client would send it twice).
            done = await published(r, question_id, question.student_id, token)
        if done == -1:
            if credentials is None:
                message = f"{question.student_id} has a token: send it as `Authorization: Bearer`"
                raise ApiError(
                    401, "student_token_missing", message, {"WWW-Authenticate": "Bearer"}
                )
            raise ApiError(403, "not_this_student", "this is not the token of that student")
        if done in (1, 2):
            ACCEPTED.inc()
        return Accepted(id=question_id, student_token=new_token if done in (2, 3) else None)

    async def published(r: redis.Redis, question_id: str, student_id: str, token: str) -> int:
        """What PUBLISH answered, read back; a 503 if the question is not in Redis."""
        for _ in range(3):  # Redis is restarting: a few short tries
            try:
                record = await r.hgetall(contract.question_key(question_id))
                owner = await r.get(contract.student_key(student_id))
            except (redis.ConnectionError, redis.TimeoutError):
                await asyncio.sleep(0.5)
                continue
            if not record:  # a script runs whole or not at all: it did not run
                break
            return 3 if record.get("enrolled") == "1" and owner == token_hash(token) else 0
        raise redis.ConnectionError("the question was not published")

    @app.get("/v1/questions/{question_id}", responses=errors)
    async def status(question_id: QuestionId, request: Request, credentials: Token) -> QuestionView:
        record = await request.app.state.redis.hgetall(contract.question_key(question_id))
        if not record:
            raise StarletteHTTPException(404, f"no question {question_id}")
        await check_student(request, record.get("student_id", ""), credentials)
        return QuestionView(
            id=question_id,
            status=record["status"],
            route=record.get("route"),
            answer=record.get("answer"),
            attempts=int(record.get("attempts", 0)),
            error=record.get("error"),
        )

    @app.get("/v1/students/{student_id}/progress", responses=errors)
    async def progress(
        student_id: Annotated[str, PathParam(pattern=rf"^{contract.STUDENT_ID}$")],
        request: Request,
        credentials: Token,
    ) -> Progress:
        await check_student(request, student_id, credentials)
        threshold = request.app.state.settings.struggle_threshold
        state = await contract.read_progress(request.app.state.redis, student_id, threshold)
        return Progress(**state)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        r = request.app.state.redis
        for topic, group in GROUPS.items():
            info = (
                {g["name"]: g for g in await r.xinfo_groups(topic)} if await r.exists(topic) else {}
            )
            BACKLOG.labels(topic, group).set(info.get(group, {}).get("pending", 0))
            LAG.labels(topic, group).set(info.get(group, {}).get("lag") or 0)
            DEAD.labels(topic).set(await r.xlen(contract.deadletter(topic)))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    instrument_gateway(app)  # a span per request, if OTEL_EXPORTER_OTLP_ENDPOINT is set (lesson 09)
    return app


if __name__ == "__main__":
    settings = contract.GatewaySettings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=10,
        http="h11",  # h11 bounds a request's headers (httptools does not)
        limit_concurrency=200,  # beyond it, 503 at once rather than memory
    )
