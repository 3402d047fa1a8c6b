"""Lesson 12: the research agent as an A2A server, as `make lesson-12` runs it (two replicas).

Step 4 (code/lesson12/step4_owners.py) grown into a service: the SDK's versioned task store and its
event log in PostgreSQL (SubscribeToTask on any replica reads them), a lease on every working
task so that another replica goes on after kill -9 (code/lesson12/durable.py), bounds on what a
caller may send and hold open, and Host and Origin checks.

Run it:  make lesson-12      (Compose: edge, two replicas, Postgres, the client agent)
         DATABASE_URL=postgresql://... python -m lesson12.a2a_server   (one replica, by hand)
"""

import asyncio
import contextvars
import importlib
import json
import logging
import uuid
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path

import uvicorn
from a2a.server.agent_execution import SimpleRequestContextBuilder
from a2a.server.cluster import DatabaseTaskEventStream
from a2a.server.routes import (
    add_a2a_routes_to_fastapi,
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from lesson10.agent import Sandbox
from lesson12 import card as card_module
from lesson12.agent import build_agent
from lesson12.callers import Callers, load_callers
from lesson12.card import BINDINGS, make_card
from lesson12.durable import DurableExecutor, DurableHandler, Recovery, Sealed
from lesson12.fast_messages import FastHandler
from lesson12.task_store import FreshIds, OneStatementTaskStore
from lesson12.work import TaskResults, WorkStore
from research_agent import (
    AllowedHostsMiddleware,
    BodyLimitMiddleware,
    KeyedSandbox,
    SandboxRunner,
    error_body,
    install_request_ids,
    install_shape_handlers,
    log_with_request_ids,
    make_durable_run_python,
    make_pool,
    migrate,
    token_hash,
)

log_with_request_ids()
logger = logging.getLogger("a2a_server")
CARD_PATH = "/.well-known/agent-card.json"


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    DATABASE_URL: SecretStr  # no default: the tasks live there
    DATABASE_POOL_SIZE: int = 5
    A2A_CALLERS_FILE: Path = Path("code/lesson12/secrets/callers")  # lines "name token"
    # The names a request may give in its Host header, as every API of the course checks them (a
    # DNS name rebound to us is refused); the card names the one the request used, with the port
    # that name is reached at (PUBLIC_PORTS, else PORT), never the header's. And the web pages
    # that may call: none (another team's agent sends no Origin).
    ALLOWED_HOSTS: list[str] = ["127.0.0.1", "localhost"]
    PUBLIC_PORTS: dict[str, int] = {}  # e.g. {"edge": 8080} behind a proxy
    ALLOWED_ORIGINS: list[str] = []
    REPLICA_ID: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    LEASE_SECONDS: float = 10.0  # a killed replica's tasks move on this long after its last beat
    EVENT_POLL_SECONDS: float = 0.2  # how often a stream served from the event log looks for more
    MAX_BODY_BYTES: int = 65_536
    MAX_PARTS: int = 8
    MAX_PART_BYTES: int = 8_000
    MAX_STREAMS_PER_CALLER: int = 4  # open on this replica
    MAX_ACTIVE_TASKS_PER_CALLER: int = 20  # working or waiting for input
    # Another agent in this composition, "module:Class" (an AgentExecutor): the A2A compatibility
    # kit's scenario executor, for its checks (docs/12, Going further). Empty: the research agent.
    A2A_AGENT: str = ""
    # SendMessage answered without the SDK's per-task machinery when it needs none of it
    # (lesson12/fast_messages.py); false: every message the SDK's way.
    A2A_FAST_PATH: bool = True
    A2A_FAST_PATH_LOG: bool = False  # a line for each message it answers (its tests read them)
    sandbox: Sandbox = Field(default_factory=Sandbox)


settings = Settings()
if settings.A2A_FAST_PATH_LOG:
    logging.getLogger("lesson12.fast_messages").setLevel(logging.DEBUG)
dsn = settings.DATABASE_URL.get_secret_value()
pool = make_pool(dsn, settings.DATABASE_POOL_SIZE)  # psycopg: checkpoints, leases, tool results
asyncpg = dsn.replace("://", "+asyncpg://", 1)
engine = create_async_engine(asyncpg, pool_pre_ping=True)  # the SDK's reads, its event log
# The task store's writes: one statement each, committed as it ends (lesson12/task_store.py).
writer = create_async_engine(asyncpg, isolation_level="AUTOCOMMIT", pool_size=5, max_overflow=5)
# The SDK's versioned store (tasks by owner, a version each), each write one statement.
tasks = OneStatementTaskStore(engine, writer)
events = DatabaseTaskEventStream(engine, poll_interval_s=settings.EVENT_POLL_SECONDS)
work = WorkStore(pool, settings.REPLICA_ID, settings.LEASE_SECONDS)
sandbox = KeyedSandbox(SandboxRunner(settings.sandbox))
# Lesson 10's: the effect once, and no sandbox started once the task was cancelled.
run_python = make_durable_run_python(TaskResults(pool, work), sandbox)
executor = DurableExecutor(None, work)  # its agent is built at start-up (lifespan)
HOME = f"http://{settings.ALLOWED_HOSTS[0]}:{settings.PORT}"  # the card's, by default
CARD = make_card(HOME, bearer=True)
limits = {
    "parts": settings.MAX_PARTS,
    "part_chars": settings.MAX_PART_BYTES,
    "streams_per_caller": settings.MAX_STREAMS_PER_CALLER,
    "active_tasks": settings.MAX_ACTIVE_TASKS_PER_CALLER,
}
shared = {
    "event_stream": events,  # SubscribeToTask on a replica that does not run the task reads it
    "interrupted_task_timeout": 60,  # a task waiting for input holds no memory past a minute
    # A part whose mediaType the card does not list (text/plain, application/json) is refused
    # with ContentTypeNotSupportedError before a task is made: the SDK checks, when asked to.
    "validate_input_modes": True,
    # A new task's id, made up here, is known absent until written: no lookups before its first.
    "request_context_builder": SimpleRequestContextBuilder(task_id_generator=FreshIds(tasks)),
    "fast": settings.A2A_FAST_PATH,
}
if settings.A2A_AGENT:  # another agent: the SDK's handler (and fast path), same store and routes
    module, _, name = settings.A2A_AGENT.partition(":")
    other = getattr(importlib.import_module(module), name)()
    handler = FastHandler(other, tasks, CARD, **shared)
else:
    handler = DurableHandler(
        executor, tasks, CARD, **shared, work=work, tool=run_python, sandbox=sandbox, limits=limits
    )
CALLERS = load_callers(settings.A2A_CALLERS_FILE)


@asynccontextmanager
async def lifespan(app: FastAPI):
    await pool.open(wait=True, timeout=60)
    checkpointer = AsyncPostgresSaver(pool)
    # Every table, ours and the SDK's, under lesson 10's lock: two replicas that start together
    # would both create the SDK's tables, and one fail on the other's types.
    await migrate(pool, checkpointer.setup, work.migrate, tasks.initialize, events.initialize)
    executor.agent = build_agent(checkpointer, run_python)
    recovery = Recovery(work, executor, tasks, events)
    loop = asyncio.create_task(recovery.run(), name="recovery")
    yield
    loop.cancel()
    await recovery.stop()
    await handler.aclose()
    await pool.close()
    await engine.dispose()
    await writer.dispose()


# The card names the address the request came to, once that address is allowed (below). It was
# last changed when card.py was: the file's time, the same in every replica of one image.
CARD_CHANGED = formatdate(Path(card_module.__file__).stat().st_mtime, usegmt=True)
reached_at = contextvars.ContextVar("reached_at", default=HOME)


async def card_for_this_host(card):
    return make_card(reached_at.get(), bearer=True)


app = FastAPI(title="The research agent over A2A", version="1.0.0", lifespan=lifespan)
app.router.redirect_slashes = False  # a path not served is a 404 (answered below), not a redirect
add_a2a_routes_to_fastapi(
    app,
    # A client may keep the card five minutes, then ask again with its ETag (a 304 if unchanged);
    # it names the host asked for, so no shared cache keeps it (private, and Vary: Host below).
    agent_card_routes=create_agent_card_routes(
        CARD, card_for_this_host, cache_control="private, max-age=300"
    ),
    # Ids checked before they are stored, and no exception's text to a caller (durable.py, Sealed).
    # The JSON-RPC endpoint with and without a trailing "/": a client that joins "/" to the card's
    # URL (httpx's base_url does; the A2A compatibility kit's client so posts) reaches it too.
    jsonrpc_routes=[
        *create_jsonrpc_routes(Sealed(handler), BINDINGS["JSONRPC"], Callers()),
        *create_jsonrpc_routes(Sealed(handler), BINDINGS["JSONRPC"] + "/", Callers()),
    ],
    rest_routes=create_rest_routes(Sealed(handler), Callers(), path_prefix=BINDINGS["HTTP+JSON"]),
)


def who_calls(request: Request) -> JSONResponse | None:
    """Origin first (a page elsewhere is refused), then a bearer token we issued for everything
    but the card. The Host was checked before (AllowedHostsMiddleware, below). None: it goes on."""
    if request.url.path in ("/health", "/ready"):
        return None
    if request.headers.get("origin") not in (None, *settings.ALLOWED_ORIGINS):
        return JSONResponse(error_body("origin_not_allowed", "no page may call this agent"), 403)
    if host := request.headers.get("host"):  # name[:port], checked whole before this runs
        name = host.lower() if host.endswith("]") else host.lower().rsplit(":", 1)[0]
        reached_at.set(f"http://{name}:{settings.PUBLIC_PORTS.get(name, settings.PORT)}")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    bearer = scheme.lower() == "bearer"
    request.state.caller = CALLERS.get(token_hash(token.strip())) if bearer else None
    if request.url.path == CARD_PATH or request.state.caller:
        return None
    body = error_body("unauthorized", "send a bearer token that this agent issued")
    return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})


class WhoCalls:
    """who_calls in front of every route, as plain ASGI: @app.middleware("http") (Starlette's
    BaseHTTPMiddleware) would run each request's app in a task of its own and pass its answer
    through a stream, a cost of every message. The card's answer says Vary: Host and when it
    last changed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        if (refused := who_calls(request)) is not None:
            return await refused(scope, receive, send)
        if request.url.path != CARD_PATH:
            return await self.app(scope, receive, send)

        async def card(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Vary"] = "Host"
                headers["Last-Modified"] = CARD_CHANGED
            await send(message)

        await self.app(scope, receive, card)


app.add_middleware(WhoCalls)
# Outermost last: a Host not in ALLOWED_HOSTS is a 400 `untrusted_host` before the body is read.
app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.ALLOWED_HOSTS)
install_request_ids(app)
install_shape_handlers(app)
shaped = app.exception_handlers[StarletteHTTPException]  # the course's shape, for the rest


@app.exception_handler(StarletteHTTPException)
async def not_served(request: Request, exc: StarletteHTTPException):
    """A JSON-RPC request to a path this agent does not serve gets a JSON-RPC error (with its id)
    that names the path that does, so a JSON-RPC client reads an error, not our 404 body. Every
    other HTTP error keeps the course's shape."""
    if exc.status_code in (404, 405) and request.method == "POST":
        try:
            sent = json.loads(await request.body())
        except (ValueError, RecursionError):  # not JSON, or nested past what json can read
            sent = None
        if isinstance(sent, dict) and sent.get("jsonrpc") == "2.0":
            request_id = sent.get("id")
            found = {
                "code": -32601,  # Method not found: not here
                "message": f"no JSON-RPC endpoint at this path; POST to {BINDINGS['JSONRPC']}",
            }
            answer = {"jsonrpc": "2.0", "id": request_id if _an_id(request_id) else None}
            return JSONResponse({**answer, "error": found}, status_code=exc.status_code)
    return await shaped(request, exc)


def _an_id(value) -> bool:
    """What JSON-RPC allows as an id (a string, a number or null), short enough to send back."""
    return (
        value is None
        or (isinstance(value, (int, float)) and not isinstance(value, bool))
        or (isinstance(value, str) and len(value) <= 128)
    )


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.get("/ready")
async def ready() -> dict:
    async with pool.connection() as conn:  # 503 (the shape's) while the database cannot answer
        await conn.execute("SELECT 1")
    return {"status": "ready", "replica": settings.REPLICA_ID}


if __name__ == "__main__":
    uvicorn.run(app, host=settings.HOST, port=settings.PORT, timeout_graceful_shutdown=5)
