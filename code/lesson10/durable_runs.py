"""Lesson 10: durable runs. A run is rows in PostgreSQL, a person approves risky tool calls, and any
replica continues a run: after a crash, after a restart, or when the person decides.

Run it:  make lesson-10      (Compose: edge, two replicas, Postgres)
         DATABASE_URL=postgresql://... python -m lesson10.durable_runs   (one replica, by hand)

Endpoints:
  POST /v1/runs                 {"query": "What is 2**100?"} -> 202 {run_id, owner_token, events}
  GET  /v1/runs                 the caller's runs waiting for approval (token or cookie)
  GET  /v1/runs/{id}            state, the pending call while it waits, the answer once done
  DELETE /v1/runs/{id}          cancel it (its owner): the run ends, its sandbox is removed
  GET  /v1/runs/{id}/events     SSE, resumable with Last-Event-ID
  POST /v1/runs/{id}/decisions  {"call_id", "decision": approve|edit|reject, "args", "message"}
  GET  /approvals               the approvals page
"""

import base64
import hashlib
import hmac
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import psycopg
import uvicorn
from fastapi import Depends, FastAPI, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings

from chat_model import OfflineToolCallingModel, make_chat_model

# The research agent's installed package: its durable layer and the course's error shape, request
# ids, body limit and sandbox runner, as lesson 04 takes them.
from lesson10.agent import Sandbox
from research_agent import (
    AllowedHostsMiddleware,
    ApiError,
    BadEdit,
    BodyLimitMiddleware,
    Conflict,
    DecisionIn,
    DurableRuns,
    KeyedSandbox,
    RunEvents,
    RunStore,
    SandboxRunner,
    approval_middleware,
    error_body,
    header_number,
    install_request_ids,
    install_shape_handlers,
    log_with_request_ids,
    make_durable_run_python,
    make_pool,
    migrate,
    resume_value,
    short,
    token_hash,
    uvicorn_forwarding,
)

log_with_request_ids()
logger = logging.getLogger("durable_runs")
PAGE = Path(__file__).with_name("approvals_page.html")


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
    # Runs running or waiting, per owner (a 429 beyond) and of all owners together (503).
    MAX_ACTIVE_RUNS_PER_OWNER: int = 20
    MAX_ACTIVE_RUNS: int = 2000
    # Event streams open on this replica, per owner and in total (429 beyond either); a quiet
    # stream sends a comment this often; the longest a stream stays open (then the client resumes).
    MAX_STREAMS_PER_OWNER: int = 10
    MAX_STREAMS: int = 200
    STREAM_KEEPALIVE_SECONDS: float = 15.0
    STREAM_MAX_SECONDS: float = 3600.0
    MAX_BODY_BYTES: int = 65_536
    REPLICA_ID: str | None = None  # names the lease holder in the runs table (default: random)
    sandbox: Sandbox = Field(default_factory=Sandbox)
    FORWARDED_ALLOW_IPS: str = ""
    # The Host names it answers (JSON in the environment): a web page under another name, pointed
    # at 127.0.0.1 (DNS rebinding), cannot start and approve runs here.
    ALLOWED_HOSTS: list[str] = ["127.0.0.1", "localhost"]


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
    sandbox = KeyedSandbox(SandboxRunner(settings.sandbox))
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


@asynccontextmanager
async def with_limits(app: FastAPI):
    """The lesson's parts (lifespan, above), and what bounds and ends runs from outside them:
    this replica's event streams, woken by one LISTEN connection and counted per owner and in
    total, and a sandbox runner for a cancelled run's containers and ended runs' kept ones."""
    async with lifespan(app):
        app.state.streams = RunEvents(
            app.state.store,
            settings.DATABASE_URL.get_secret_value(),
            max_streams=settings.MAX_STREAMS,
            max_per_owner=settings.MAX_STREAMS_PER_OWNER,
            keepalive_seconds=settings.STREAM_KEEPALIVE_SECONDS,
            max_seconds=settings.STREAM_MAX_SECONDS,
        )
        app.state.streams.start()
        app.state.sandboxes = KeyedSandbox(SandboxRunner(settings.sandbox))
        app.state.sandboxes.start_sweep(app.state.store)  # ended runs' kept sandboxes, every 30 s
        try:
            yield
        finally:
            app.state.sandboxes.close()
            await app.state.streams.stop()


app = FastAPI(title="Durable runs", version="1.0.0", lifespan=with_limits)
app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.ALLOWED_HOSTS)
install_request_ids(app)
install_shape_handlers(app)


@app.exception_handler(psycopg.OperationalError)
@app.exception_handler(PoolTimeout)
async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The database is restarting: a line in the log (no traceback), a 503 the client may retry.
    logger.warning("database unavailable for %s: %s", request.url.path, short(exc))
    body = error_body("database_unavailable", "the run store is unavailable", retryable=True)
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


# === Owners: a token, kept as its hash; sent as a Bearer header or the page's cookie ===
# The owner is the caller: its caps (active runs, open streams) count per token, never per address.

TOKEN_COOKIE = "runs_token"
RunId = Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$", description="32 hex digits")]


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
        message = "send the run's owner_token as a Bearer token"
        raise ApiError(401, "owner_token_missing", message, {"WWW-Authenticate": "Bearer"})
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
    caller = request.client.host if request.client else "unknown"  # for the record only
    cap, total_cap = settings.MAX_ACTIVE_RUNS_PER_OWNER, settings.MAX_ACTIVE_RUNS
    mine, everyone = await request.app.state.store.create(
        run_id, token_hash(token), caller, body.query, cap, total_cap
    )
    if mine >= cap:
        message = f"you have {cap} runs going or waiting; cancel one (DELETE /v1/runs/ID)"
        raise ApiError(429, "too_many_active_runs", message, {"Retry-After": "30"})
    if everyone >= total_cap:
        message = f"{total_cap} runs are going or waiting, the most this service holds"
        body = error_body("too_many_active_runs_in_total", message, retryable=True)
        return JSONResponse(body, status_code=503, headers={"Retry-After": "30"})
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


@app.delete("/v1/runs/{run_id}")
async def cancel_run(run: OwnedRun, request: Request) -> dict:
    if not await request.app.state.store.cancel(run["id"]):
        raise ApiError(409, "run_ended", f"the run has ended already ({run['state']})")
    # Its sandbox, if one runs now (on whichever replica), is removed: the code stops. One made
    # after this look is never started: the tool asks whether the run ended first.
    await request.app.state.sandboxes.stop_cancelled(run["id"])
    return {"run_id": run["id"], "state": "cancelled"}


async def run_stream(
    run: OwnedRun, request: Request, last_event_id: Annotated[str | None, Header()] = None
) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """What answers with a status, checked before the stream starts: 400 unless Last-Event-ID is
    0-9 digits and not past the run's last event, 204 once an ended run is read to its end
    (EventSource stops retrying), 429 past this owner's or this replica's limit. The stream's slot
    is held until it ends."""
    after = header_number(last_event_id, "Last-Event-ID") or 0
    async with request.app.state.streams.opened(run, after) as events:
        yield events


@app.get("/v1/runs/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    events: Annotated[AsyncIterator[ServerSentEvent], Depends(run_stream)],
) -> AsyncIterable[ServerSentEvent]:
    async for event in events:
        yield event


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


def page_headers(html: str) -> dict[str, str]:
    """The page may run its own inline script and style (by their hashes) and fetch this origin,
    nothing else; no other page may frame it (its cookie would go along: clickjacking), no browser
    may read it as anything but HTML, and no link from it says where it came from."""

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}\b[^>]*>(.*?)</{tag}>", html, flags=re.S)
        digests = (hashlib.sha256(b.encode()).digest() for b in blocks)
        return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests) or "'none'"

    policy = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


@app.get("/approvals", response_class=HTMLResponse)
async def approvals_page() -> HTMLResponse:
    html = PAGE.read_text()
    return HTMLResponse(html, headers=page_headers(html))


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        **uvicorn_forwarding(settings.FORWARDED_ALLOW_IPS),
    )
