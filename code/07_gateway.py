"""Lesson 07: the gateway, the only HTTP part of the event-driven agents (07_event_agents.py).

    POST /v1/questions            publish to learning.requests, answer 202 {"id"} at once
    GET  /v1/questions/{id}       pending | answered | failed, the route, the answer, the attempts
    GET  /v1/students/{id}/progress   the progress agent's state

It calls no agent: it publishes an event and reads the state the agents stored. Run it with
`python code/07_gateway.py` (REDIS_URL, HOST, PORT), or `make lesson-07` for the whole system.
"""

import importlib
import logging
import os
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

import redis.asyncio as redis
import uvicorn
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

# The topics, the envelope and the Redis layout have one owner: the agents' module. The error shape
# and the request-id rule are the research agent's (its `app` package: research-agent/ here, /app in
# the lesson's image, which builds on the research agent's).
agents = importlib.import_module("07_event_agents")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research-agent"))
from app.error_shape import ErrorResponse, error_body, install_shape_handlers  # noqa: E402
from app.request_ids import log_with_request_ids, safe_request_id  # noqa: E402

log_with_request_ids(force=True)
logger = logging.getLogger("gateway")

StudentId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
QuestionId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]

STRUGGLE_THRESHOLD = agents.Settings().struggle_threshold
ACCEPTED = Counter("questions_accepted_total", "Questions published to learning.requests")
BACKLOG = Gauge("topic_pending_messages", "Delivered, not yet acked", ["topic", "group"])
LAG = Gauge("topic_unread_messages", "Not yet delivered to the group", ["topic", "group"])
DEAD = Gauge("topic_deadletter_messages", "Messages in the dead-letter topic", ["topic"])


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    student_id: StudentId
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
    app.state.redis = redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(
            app.state.redis_url,
            max_connections=50,
            timeout=5,
            decode_responses=True,
            socket_connect_timeout=3,
        )
    )
    yield
    await app.state.redis.aclose()


def create_app(redis_url: str | None = None) -> FastAPI:
    app = FastAPI(title="Event-driven learning assistant", lifespan=lifespan)
    app.state.redis_url = redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        validator=None,
        transformer=safe_request_id,
    )
    errors = {code: {"model": ErrorResponse} for code in (404, 422, 503)}

    install_shape_handlers(app)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        logger.warning("Redis failed: %r", exc)
        return JSONResponse(error_body("redis_unavailable", "Redis is not answering"), 503)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(request: Request) -> dict:
        await request.app.state.redis.ping()  # a RedisError becomes the 503 above
        return {"status": "ready"}

    @app.post("/v1/questions", status_code=202, responses=errors)
    async def ask(question: Question, request: Request) -> Accepted:
        """Publish the question; the agents answer it in the background."""
        question_id = uuid.uuid4().hex
        event = agents.envelope(
            question_id,
            "/lesson07/gateway",
            "learning.question.asked",
            {"question_id": question_id, **question.model_dump()},
        )
        # The question's record and its event together: no event without a record to update.
        pipe = request.app.state.redis.pipeline(transaction=True)
        pipe.hset(
            agents.question_key(question_id),
            mapping={
                "student_id": question.student_id,
                "status": "pending",
                "attempts": 0,
                "asked_at": f"{time.time():.3f}",
            },
        )
        pipe.xadd(agents.LEARNING, agents.entry(event))
        await pipe.execute()
        ACCEPTED.inc()
        return Accepted(id=question_id)

    @app.get("/v1/questions/{question_id}", responses=errors)
    async def status(question_id: QuestionId, request: Request) -> QuestionView:
        record = await request.app.state.redis.hgetall(agents.question_key(question_id))
        if not record:
            raise StarletteHTTPException(404, f"no question {question_id}")
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
        student_id: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_.-]{1,64}$")],
        request: Request,
    ) -> Progress:
        state = await agents.read_progress(request.app.state.redis, student_id, STRUGGLE_THRESHOLD)
        return Progress(**state)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        r = request.app.state.redis
        groups = {
            agents.LEARNING: "triage",
            agents.PROGRESS: "progress",
            **{t: k for k, t in agents.SPECIALIST_TOPICS.items()},
        }
        for topic, group in groups.items():
            info = (
                {g["name"]: g for g in await r.xinfo_groups(topic)} if await r.exists(topic) else {}
            )
            BACKLOG.labels(topic, group).set(info.get(group, {}).get("pending", 0))
            LAG.labels(topic, group).set(info.get(group, {}).get("lag") or 0)
            DEAD.labels(topic).set(await r.xlen(agents.deadletter(topic)))
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


if __name__ == "__main__":
    uvicorn.run(
        create_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "8070")),
        timeout_graceful_shutdown=10,
    )
