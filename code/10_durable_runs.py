"""Lesson 10: durable runs. A run is rows in PostgreSQL, a person approves risky tool calls, and any
replica continues a run: after a crash, after a restart, or when the person decides.

Run it:  make lesson-10      (Compose: edge, two replicas, Postgres)
         DATABASE_URL=postgresql://... python code/10_durable_runs.py   (one replica, by hand)

Endpoints:
  POST /v1/runs                 {"query": "What is 2**100?"} -> 202 {run_id, owner_token, events}
  GET  /v1/runs                 the caller's runs waiting for approval (token or cookie)
  GET  /v1/runs/{id}            state, the pending call while it waits, the answer once done
  GET  /v1/runs/{id}/events     SSE, resumable with Last-Event-ID
  POST /v1/runs/{id}/decisions  {"call_id", "decision": approve|edit|reject, "args", "message"}
  GET  /approvals               the approvals page
"""

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import psycopg
import uvicorn
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings

from chat_model import OfflineToolCallingModel, make_chat_model

# The research agent's installed package: its durable layer and the course's error shape, request
# ids, body limit and sandbox runner, as lesson 04 takes them.
from research_agent import (
    ApiError,
    BadEdit,
    BodyLimitMiddleware,
    Conflict,
    DecisionIn,
    DurableRuns,
    KeyedSandbox,
    RunStore,
    SandboxConfig,
    SandboxRunner,
    approval_middleware,
    error_body,
    install_shape_handlers,
    log_with_request_ids,
    make_durable_run_python,
    make_pool,
    migrate,
    resume_value,
    safe_request_id,
    short,
    uvicorn_forwarding,
)

log_with_request_ids()
logger = logging.getLogger("durable_runs")
PAGE = Path(__file__).with_name("10_approvals_page.html")


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    DATABASE_URL: SecretStr  # no default: the runs live there
    DATABASE_POOL_SIZE: int = 5
    OPENAI_API_KEY: SecretStr | None = None
    MODEL_NAME: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: int = 20
    APPROVAL_TOOLS: list[str] = ["run_python"]  # JSON in the environment: '["run_python"]'
    APPROVAL_TIMEOUT_SECONDS: float = 3600.0  # a run nobody decides on ends (state expired)
    LEASE_SECONDS: float = 10.0  # a killed replica's runs move on this long after its last beat
    MAX_ACTIVE_RUNS_PER_CALLER: int = 20  # running or waiting: 429 beyond
    MAX_BODY_BYTES: int = 65_536
    REPLICA_ID: str | None = None  # names the lease holder in the runs table (default: random)
    SANDBOX_IMAGE: str = "agent-sandbox:python"
    SANDBOX_RUNTIME: str | None = None
    SANDBOX_TIMEOUT_SECONDS: float = 10.0
    SANDBOX_OWNER: str = "lesson-10"
    FORWARDED_ALLOW_IPS: str = ""


settings = Settings()

SYSTEM_PROMPT = """You answer questions. For anything that needs computing, call run_python with a
complete program that prints the result, then answer from its output. If the run failed or a
person rejected it, say so."""


# [start:compose]
@asynccontextmanager
async def lifespan(app: FastAPI):
    pool = make_pool(settings.DATABASE_URL.get_secret_value(), settings.DATABASE_POOL_SIZE)
    await pool.open(wait=True, timeout=60)
    checkpointer = AsyncPostgresSaver(pool)  # a checkpoint per step, in the same database
    await migrate(pool, checkpointer.setup)  # once, whichever replica is first
    store = RunStore(pool)
    sandbox = KeyedSandbox(SandboxRunner(SandboxConfig.from_settings(settings)))
    tools = [make_durable_run_python(store, sandbox)]
    model = make_chat_model(
        settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None,
        settings.MODEL_NAME,
        settings.OFFLINE_TOKEN_DELAY_MS,
        offline_model=OfflineToolCallingModel,
    )
    agent = create_agent(
        model,
        tools,
        system_prompt=SYSTEM_PROMPT,
        middleware=[
            approval_middleware(settings.APPROVAL_TOOLS),  # pause before these tools
            ModelCallLimitMiddleware(run_limit=4, exit_behavior="end"),
        ],
        checkpointer=checkpointer,
    )
    runs = DurableRuns(
        store,
        agent,
        replica=settings.REPLICA_ID,
        lease_seconds=settings.LEASE_SECONDS,
        approval_timeout=settings.APPROVAL_TIMEOUT_SECONDS,
    )
    runs.start()  # continue whatever is claimable: new runs, decided ones, a dead replica's
    app.state.store, app.state.runs, app.state.tools = store, runs, {t.name: t for t in tools}
    yield
    await runs.stop()
    await pool.close()
    # [end:compose]


app = FastAPI(title="Durable runs", version="1.0.0", lifespan=lifespan)
app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
app.add_middleware(
    CorrelationIdMiddleware, header_name="X-Request-ID", validator=None, transformer=safe_request_id
)
install_shape_handlers(app)


@app.exception_handler(psycopg.OperationalError)
@app.exception_handler(PoolTimeout)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is restarting: a line in the log (no traceback), a 503 the client may retry.
    logger.warning("database unavailable for %s: %s", request.url.path, short(exc))
    body = error_body("database_unavailable", "the run store is unavailable", retryable=True)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


# === Owners: a token, kept as its hash; sent as a Bearer header or the page's cookie ===

TOKEN_COOKIE = "runs_token"
RunId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="32 hex digits")]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def presented_token(request: Request, authorization: str | None) -> str | None:
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(TOKEN_COOKIE)


async def owned_run(
    run_id: RunId, request: Request, authorization: Annotated[str | None, Header()] = None
) -> dict:
    run = await request.app.state.store.get(run_id)
    if run is None:
        raise ApiError(404, "run_not_found", f"no run {run_id}")
    token = presented_token(request, authorization)
    if token is None:
        raise ApiError(401, "owner_token_missing", "send the run's owner_token as a Bearer token",
                       {"WWW-Authenticate": "Bearer"})  # fmt: skip
    if not hmac.compare_digest(run["owner_hash"], token_hash(token)):  # constant time
        raise ApiError(403, "not_run_owner", "this is not the owner token of that run")
    return run


OwnedRun = Annotated[dict, Depends(owned_run)]


# === Routes ===


class RunRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    query: str = Field(min_length=1, max_length=4000)


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.get("/ready")
async def ready(request: Request) -> dict:
    await request.app.state.store.ping()  # 503 (database_unavailable) while it cannot answer
    return {"status": "ready"}


@app.post("/v1/runs", status_code=202)
async def create_run(
    body: RunRequest, request: Request, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    # One owner for all their runs (the page lists them): a token they already hold, else a new one.
    token = presented_token(request, authorization)
    if token is None or len(token) < 32:
        token = secrets.token_urlsafe(32)
    run_id = uuid.uuid4().hex
    caller = request.client.host if request.client else "unknown"
    cap = settings.MAX_ACTIVE_RUNS_PER_CALLER
    active = await request.app.state.store.create(
        run_id, token_hash(token), caller, body.query, cap
    )
    if active >= cap:
        raise ApiError(429, "too_many_active_runs", f"you have {cap} runs going or waiting",
                       {"Retry-After": "30"})  # fmt: skip
    request.app.state.runs.wake()
    events = f"/v1/runs/{run_id}/events"
    response = JSONResponse(
        {"run_id": run_id, "owner_token": token, "events": events, "status": f"/v1/runs/{run_id}"},
        status_code=202,
    )
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
    return response


@app.get("/v1/runs")
async def waiting_runs(request: Request, authorization: Annotated[str | None, Header()] = None):
    token = presented_token(request, authorization)
    if token is None:
        return {"runs": []}
    rows = await request.app.state.store.waiting_for(token_hash(token))
    return {
        "runs": [{"run_id": r["id"], "query": r["query"], "pending": r["pending"]} for r in rows]
    }


@app.get("/v1/runs/{run_id}")
async def run_state(run: OwnedRun) -> dict:
    return {
        "run_id": run["id"],
        "state": run["state"],
        "pending": run["pending"],
        "answer": run["answer"],
        "error": run["error"],
    }


@app.get("/v1/runs/{run_id}/events")
async def run_events(
    run: OwnedRun, request: Request, last_event_id: Annotated[str | None, Header()] = None
) -> StreamingResponse:
    store = request.app.state.store
    after = int(last_event_id) if (last_event_id or "").isdigit() else 0

    async def stream():
        seq = after
        for _ in range(36_000):  # an hour of polls at most; the client reconnects
            if await request.is_disconnected():
                return
            for event in await store.events_after(run["id"], seq):
                seq = event["seq"]
                data = json.dumps({"type": event["type"], **event["data"]})
                yield f"id: {seq}\nevent: {event['type']}\ndata: {data}\n\n"
                if event["type"] in ("done", "failed", "approval_expired"):
                    return
            await asyncio.sleep(0.1)  # no connection held between polls

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


# [start:decide]
@app.post("/v1/runs/{run_id}/decisions", status_code=202)
async def decide(body: DecisionIn, run: OwnedRun, request: Request) -> dict:
    pending = run["pending"] or {}
    if run["state"] != "waiting_for_approval" or pending.get("call_id") != body.call_id:
        raise ApiError(409, "not_pending", "that call is not waiting for a decision")
    tool = request.app.state.tools.get(pending["tool"])
    try:
        decision = resume_value(body, pending["tool"], tool)  # an edit checked against the schema
    except BadEdit as exc:
        return JSONResponse(
            error_body("validation_error", str(exc), details=exc.errors), status_code=422
        )
    try:  # the decisions table's primary key decides a race, whichever replica each one reached
        await request.app.state.store.decide(run["id"], body.call_id, decision)
    except Conflict as exc:
        raise ApiError(409, "not_pending", str(exc)) from None
    request.app.state.runs.wake()  # this replica continues it at once; any other would too
    return {"run_id": run["id"], "call_id": body.call_id, "decision": body.decision}
    # [end:decide]


@app.get("/approvals", response_class=HTMLResponse)
async def approvals_page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(), headers={"Content-Security-Policy": "default-src 'self'; "
                        "script-src 'unsafe-inline'; style-src 'unsafe-inline'"})  # fmt: skip


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        **uvicorn_forwarding(settings.FORWARDED_ALLOW_IPS),
    )
