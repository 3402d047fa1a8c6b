"""Lesson 07: the gateway, the only HTTP part of the event-driven agents (event_agents.py).

    POST /v1/questions            publish to learning.requests, answer 202 {"id"} at once
    GET  /v1/questions/{id}       pending | answered | failed, the route, the answer, the attempts
    GET  /v1/students/{id}/progress   the progress agent's state

It calls no agent: it publishes an event and reads the state the agents stored. Run it with
`python -m lesson07.gateway` (REDIS_URL, HOST, PORT), or `make lesson-07` for the whole system.
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
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from starlette.exceptions import HTTPException as StarletteHTTPException

from lesson07 import access, contract

# The topics, the envelope, the Redis layout and how progress is read have one owner:
# lesson07.contract; who may ask, and how much, lesson07.access. The error shape, the body limit,
# request ids and how a student's token is stored are the research agent's (its installed
# `research_agent` package).
from lesson07.tracing import FASTAPI_TELEMETRY, instrument_gateway, trace_context
from research_agent import (
    ApiError,
    BodyLimitMiddleware,
    ErrorResponse,
    error_body,
    install_request_ids,
    install_shape_handlers,
    log_with_request_ids,
)

log_with_request_ids(force=True)
logger = logging.getLogger("gateway")

StudentId = Annotated[str, Field(pattern=rf"^{contract.STUDENT_ID}$")]
QuestionId = Annotated[str, PathParam(pattern=rf"^{contract.QUESTION_ID}$")]
StudentPath = Annotated[str, PathParam(pattern=rf"^{contract.STUDENT_ID}$")]

ACCEPTED = Counter("questions_accepted_total", "Questions published to learning.requests")
BACKLOG = Gauge("topic_pending_messages", "Delivered, not yet acked", ["topic", "group"])
LAG = Gauge("topic_unread_messages", "Not yet delivered to the group", ["topic", "group"])
DEAD = Gauge("topic_deadletter_messages", "Messages in the dead-letter topic", ["topic"])

# The question's record and its event, at once, if the token is still the student's, whose id
# then lives STUDENT_TTL_SECONDS more. KEYS: student, question, learning topic, asked. ARGV: token
# hash, record fields (JSON), event, ttl, maxlen, the student's ttl. -1: the student has another
# token (or none). 1: published. A question asked already (the same call retried after its reply
# was lost, or the same Idempotency-Key) publishes nothing: 0. Asked is this gateway's record (no
# agent writes it): a question record without one was made by someone else, and is replaced.
PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('EXPIRE', KEYS[1], ARGV[6])
if redis.call('EXISTS', KEYS[4]) == 1 then return 0 end
redis.call('HDEL', KEYS[2], 'route', 'topic', 'answer', 'answered_by', 'error')
local record = cjson.decode(ARGV[2])
local fields = {}
for field, value in pairs(record) do table.insert(fields, field); table.insert(fields, value) end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[4], 'student_id', record['student_id'])
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 'data', ARGV[3])
return 1
"""


class Enrolment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_id: StudentId


class Enrolled(BaseModel):
    student_id: str
    student_token: str = Field(
        description="shown once: send it as `Authorization: Bearer` to ask as the student and to "
        "read the student's answers and progress"
    )


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_id: StudentId
    # A lone surrogate (JSON's \ud800) is refused by pydantic already: a 422, never published.
    text: str = Field(min_length=1, max_length=4000)


class Accepted(BaseModel):
    id: str


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
            username=settings.redis_username,
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


# === What lifespan() keeps on app.state, reached by the routes as dependencies ===


def get_settings(request: Request) -> contract.GatewaySettings:
    return request.app.state.settings


def get_redis(request: Request) -> redis.Redis:
    return request.app.state.redis


SettingsDep = Annotated[contract.GatewaySettings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis, Depends(get_redis)]
bearer = HTTPBearer(auto_error=False, description="the `student_token` of the student")


def student_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str | None:
    return credentials.credentials if credentials else None


Token = Annotated[str | None, Depends(student_token)]


async def published(r: redis.Redis, question_id: str) -> int:
    """What PUBLISH answered, read back; a 503 if the question is not in Redis."""
    for _ in range(3):  # Redis is restarting: a few short tries
        try:
            if await r.exists(contract.asked_key(question_id)):
                return 0  # a script runs whole or not at all: it ran, and published
            break
        except (redis.ConnectionError, redis.TimeoutError):
            await asyncio.sleep(0.5)
    raise redis.ConnectionError("the question was not published")


# === The routes: the questions API, and what orchestrators and Prometheus ask ===

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 413, 422, 429, 503)}
questions = APIRouter(prefix="/v1", responses=ERRORS)
probes = APIRouter()  # /health, /ready and /metrics


@questions.post("/students", status_code=201)
async def enrol(
    enrolment: Enrolment, request: Request, r: RedisDep, settings: SettingsDep
) -> Enrolled:
    """Claim a student id: the first to ask for a free one gets its token, once; anyone asking
    for it later gets 409. SET NX decides, so two at once cannot both win."""
    await access.admit_enrolment(request.app.state.limiter, settings, request)
    token, key = secrets.token_urlsafe(32), contract.student_key(enrolment.student_id)
    hashed = access.token_hash(settings, token)
    if not await r.set(key, hashed, nx=True, ex=settings.student_ttl_seconds):
        message = f"{enrolment.student_id} is taken: enrol under another student id"
        raise ApiError(409, "student_id_taken", message)
    return Enrolled(student_id=enrolment.student_id, student_token=token)


@questions.post("/questions", status_code=202)
async def ask(
    question: Question,
    request: Request,
    token: Token,
    r: RedisDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> Accepted:
    """Publish the question; the agents answer it in the background. With an Idempotency-Key,
    the same key for the same student is the same question, however often it is sent."""
    # The token first: a caller who is not the student spends none of the student's questions.
    await access.check_student(r, settings, question.student_id, token)
    await access.admit(r, request.app.state.limiter, settings, question.student_id)
    if idempotency_key:  # under the gateway's key: no agent can work out a student's next id
        seed = f"{question.student_id}\n{idempotency_key}".encode()
        key = settings.token_key.get_secret_value().encode()
        question_id = hmac.new(key, seed, hashlib.sha256).hexdigest()[:32]
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
        contract.asked_key(question_id),
    ]
    args = [
        access.token_hash(settings, token),
        json.dumps(record),
        json.dumps(event),
        settings.question_ttl_seconds,
        settings.topic_maxlen,
        settings.student_ttl_seconds,
    ]
    try:  # the client's retries (set in lifespan) send the same script again: it publishes once
        done = await request.app.state.publish(keys=keys, args=args)
    except (redis.ConnectionError, redis.TimeoutError):
        # The script may have run and only its reply been lost: a question that is in Redis
        # was published, and is answered 202, not 503 (a client would send it twice).
        done = await published(r, question_id)
    if done == -1:  # the token was the student's a moment ago: the student id has expired
        raise ApiError(403, "not_this_student", "this is not the token of that student")
    if done == 1:
        ACCEPTED.inc()
    return Accepted(id=question_id)


@questions.get("/questions/{question_id}")
async def status(
    question_id: QuestionId, r: RedisDep, settings: SettingsDep, token: Token
) -> QuestionView:
    record = await r.hgetall(contract.question_key(question_id))
    if not record or not await r.exists(contract.asked_key(question_id)):  # ours, or nobody's
        raise StarletteHTTPException(404, f"no question {question_id}")
    await access.check_student(r, settings, record.get("student_id", ""), token)
    return QuestionView(
        id=question_id,
        status=record["status"],
        route=record.get("route"),
        answer=record.get("answer"),
        attempts=int(record.get("attempts", 0)),
        error=record.get("error"),
    )


@questions.get("/students/{student_id}/progress")
async def progress(
    student_id: StudentPath, r: RedisDep, settings: SettingsDep, token: Token
) -> Progress:
    await access.check_student(r, settings, student_id, token)
    state = await contract.read_progress(r, student_id, settings.struggle_threshold)
    return Progress(**state)


@probes.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@probes.get("/ready", responses={503: {"model": ErrorResponse}})
async def ready(r: RedisDep) -> dict:
    await r.ping()  # a RedisError becomes redis_down's 503
    return {"status": "ready"}


@probes.get("/metrics", include_in_schema=False)
async def metrics(r: RedisDep) -> Response:
    for topic, group in contract.GROUPS.items():
        info = {g["name"]: g for g in await r.xinfo_groups(topic)} if await r.exists(topic) else {}
        BACKLOG.labels(topic, group).set(info.get(group, {}).get("pending", 0))
        LAG.labels(topic, group).set(info.get(group, {}).get("lag") or 0)
        DEAD.labels(topic).set(await r.xlen(contract.deadletter(topic)))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def redis_down(request: Request, exc: Exception) -> JSONResponse:
    """Redis (or the rate limiter's Redis) not answering: 503 in the error shape, retryable."""
    logger.warning("Redis failed: %r", exc)
    body = error_body("redis_unavailable", "Redis is not answering", retryable=True)
    return JSONResponse(body, 503, headers={"Retry-After": "2"})


# === The app: middleware, error handlers and routers, composed here and only here ===


def create_app(settings: contract.GatewaySettings | None = None) -> FastAPI:
    settings = settings or contract.GatewaySettings()
    app = FastAPI(
        title="Event-driven learning assistant", lifespan=lifespan, telemetry=FASTAPI_TELEMETRY
    )
    app.state.settings = settings
    # Neither a Host that is not ours nor a body over the limit reaches a route.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    hosts = {h.strip() for h in settings.allowed_hosts.split(",") if h.strip()}
    app.add_middleware(access.HostCheck, hosts=hosts)
    install_request_ids(app)
    install_shape_handlers(app)
    app.add_exception_handler(redis.RedisError, redis_down)
    app.add_exception_handler(StorageError, redis_down)
    app.include_router(probes)
    app.include_router(questions)
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
