"""Lesson 05: one question, N variations of the research agent in parallel containers, on one page.

Run it:  make lesson-05  (builds the image, starts Redis on its own Docker network, serves this API)
Open http://127.0.0.1:8000, ask with 3 variations, watch the columns fill, reload, pick one.

    browser ──POST /v1/runs──▶ this API ──Docker SDK──▶ N worker containers (research-agent image,
       ▲                          │                      `python -m research_agent.worker`,
       │                          │                      one variation each)
       │                          │ XREAD BLOCK                     │ XADD every event
       └──SSE: id = stream id ◀───┴──────── Redis Stream run:{id}:events ◀──┘

No run state in memory: runs, variations and events live in Redis, the workers run on their own,
so the API can restart mid-run and its clients resume with Last-Event-ID. This file is where the
steps of docs/05 arrive (code/lesson05/step1_worker.py to code/lesson05/step5_lifecycle.py, `make
lesson-05 STEP=K`); what the doc explains under "Going further" is in code/lesson05/, one module per
topic."""

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import uvicorn
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from lesson05 import docker_workers, guards, redis_access, routes, store, warm
from lesson05.guards import OwnedRun
from lesson05.presets import RunRequest
from lesson05.recovery import Adoption, NoAdoption
from lesson05.store import RunCreated, Runs, id_tuple
from lesson05.traces import TELEMETRY, trace_launches, trace_runs

# The worker's contract (research_agent/worker/job.py: its job, keys, exit codes), installed.
from research_agent import ApiError, Job, log_with_request_ids, token_hash

log_with_request_ids()
logger = logging.getLogger("variations")

# === Settings: the only place that reads the environment ===


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # Host names this API answers to (a JSON list); any other Host gets 400 (lesson05/guards.py).
    ALLOWED_HOSTS: list[str] = ["127.0.0.1", "localhost"]
    # How this API reaches Redis, as its user `api` (scripts/lesson-05.sh prints it).
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    # The same Redis, seen from a worker. Only its address is used here: each worker gets a user
    # of its own (lesson05/redis_access.py), not the steps' shared one the script's URL names.
    WORKER_REDIS_URL: str = "redis://lesson-05-redis:6379/0"
    WORKER_IMAGE: str = "research-agent:optimized"
    WORKER_NETWORK: str = "lesson-05"
    DEPLOYMENT: str = "lesson-05"  # labels this API's containers: only these are swept or adopted
    WORKER_MEMORY: str = "512m"  # limits of each worker container, then of the whole service
    WORKER_CPUS: float = 1.0
    WORKER_PIDS: int = 128
    MAX_ACTIVE_RUNS: int = 2
    MAX_RUNS_PER_CLIENT: int = 1  # per client address, so one client cannot hold every slot
    VARIATION_TIMEOUT_SECONDS: float = 120.0
    CANCEL_WAIT_SECONDS: float = 120.0  # a cancel waits this long for containers being created
    # Warm workers: started ahead, each waiting for one variation (0: off; lesson05/warm.py).
    WARM_WORKERS: int = Field(0, ge=0, le=16)
    WARM_MAX_AGE_SECONDS: float = Field(240.0, gt=0)
    STREAM_MAXLEN: int = 5000  # entries kept in one run's stream
    EVENT_MAX_BYTES: int = 64 * 1024  # one worker event; a bigger one: refused, its worker cut off
    VARIATION_MAX_BYTES: int = 2 * 2**20  # all of one variation's events; past it, cut off too
    RUN_TTL_SECONDS: int = 3600  # how long a finished run stays readable
    REAP_INTERVAL_SECONDS: float = 0.25
    # Each open event stream holds a Redis connection (XREAD BLOCK): capped in total, per client.
    MAX_STREAMS: int = 32
    MAX_STREAMS_PER_CLIENT: int = 4
    REDIS_CONNECTIONS: int = 16  # for the routes; the reaper has 2 more of its own
    OFFLINE_TOKEN_DELAY_MS: int = 40  # passed on to every worker, as are the OPENAI_* below
    ALLOWED_MODELS: list[str] = ["gpt-4o-mini"]  # what `overrides[].model` may ask for
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    WORKER_OTEL_EXPORTER_OTLP_ENDPOINT: str = ""  # lesson 09: workers' traces ("": the API's)


# === The run lifecycle: start the workers, reap them as they exit ===


def worker_settings(settings: Settings) -> dict:
    """What every worker gets from this API, whatever its variation."""
    names = ("OFFLINE_TOKEN_DELAY_MS", "OPENAI_API_KEY", "OPENAI_BASE_URL")
    return {name: getattr(settings, name) for name in names}


class Orchestrator:
    """Starts one container per variation, and reaps them. POST /v1/runs calls create(), with the
    routes' Redis connections (`runs`, a Runs); a background task calls reap() every
    REAP_INTERVAL_SECONDS, with connections of its own (`reaper_runs`); `workers` starts and lists
    the containers. What Going further adds, it holds as collaborators and calls at named points:
    `caps` admits a run, `users` gives each job its Redis URL, `pool` may have a warm worker for
    a variation, `recovery` may adopt one whose container vanished. lifespan() composes them."""

    def __init__(
        self, settings, runs, workers, reaper_runs, caps=None, users=None, pool=None, recovery=None
    ):
        self.settings, self.runs, self.workers = settings, runs, workers
        self.reaper_runs = reaper_runs
        self.relay = redis_access.Relay(reaper_runs)
        # Without them, the core path: no other cap, one Redis URL, no warm pool, no adoption.
        self.caps = caps or guards.NoOtherCaps()
        self.users = users or redis_access.SharedUser(settings.WORKER_REDIS_URL)
        self.pool = pool or warm.NoPool()
        self.recovery = recovery or NoAdoption()
        self.starting: dict[str, asyncio.Task] = {}  # run id -> its containers being created
        self.lock = asyncio.Lock()

    def job(self, run_id: str, query: str, v: dict, count: int, url: str) -> tuple[Job, dict]:
        """The variation's job, and the agent's settings it changes (research_agent/worker/job.py
        writes both)."""
        s = self.settings
        # Room in the stream for each variation's tokens, after every other event of the run.
        budget = max(0, (s.STREAM_MAXLEN - 3 - 12 * count) // count)
        job = Job(
            RUN_ID=run_id,
            VARIATION=v["index"],
            QUERY=query,
            ANSWER_STYLE=v["style"],
            REDIS_URL=url,
            STREAM_MAXLEN=s.STREAM_MAXLEN,
            TOKEN_BUDGET=budget,
        )
        agent = {
            "TEMPERATURE": v["temperature"],
            "SEARCH_MAX_RESULTS": v["search_depth"],
            "MODEL_NAME": v.get("model"),
            # The agent gives up a little before the container is killed, so it can say why.
            "REQUEST_TIMEOUT_SECONDS": max(1.0, s.VARIATION_TIMEOUT_SECONDS - 5),
            **worker_settings(s),
        }
        return job, agent

    async def admit(self, active: set[str], client: str) -> None:
        if len(active) >= (most := self.settings.MAX_ACTIVE_RUNS):
            message = f"{most} runs are already running; wait for one to finish or cancel one"
            raise ApiError(429, "too_many_runs", message, headers={"Retry-After": "5"})
        await self.caps.admit(active, client)

    async def create(self, request: RunRequest, client: str, owner: str) -> dict:
        variations = request.resolved()
        async with self.lock:  # check and add in one step, or two requests could both pass
            await self.admit(await self.runs.active(), client)
            run_id = uuid.uuid4().hex
            await self.runs.create(run_id, request.query, variations, client, owner)
        task = asyncio.create_task(self.start_all(run_id, request.query, variations))
        self.starting[run_id] = task
        task.add_done_callback(lambda _: self.starting.pop(run_id, None))
        return {"run_id": run_id, "variations": variations}

    async def start_all(self, run_id: str, query: str, variations: list[dict]) -> None:
        count = len(variations)
        await asyncio.gather(*(self.start_one(run_id, query, v, count) for v in variations))

    async def start_worker(self, job: Job, agent: dict) -> tuple[str, str]:
        """The pool's warm worker if it has one for the job, else a new container with the job in
        its environment: (its id, "warm" or "cold")."""
        if warm := self.pool.take(job.RUN_ID, job.VARIATION):  # (name, id) of one started ahead
            return warm[1], "warm"
        env = job.to_env(**agent)
        worker_id = await asyncio.to_thread(self.workers.start, job.RUN_ID, job.VARIATION, env)
        return worker_id, "cold"

    async def start_one(self, run_id: str, query: str, v: dict, count: int) -> None:
        index, began = v["index"], time.time()
        deadline = began + self.settings.VARIATION_TIMEOUT_SECONDS
        await self.runs.update_variation(run_id, index, status="running", deadline=deadline)
        try:
            url = await self.users.variation(run_id, index)  # the Redis URL of this job
            job, agent = self.job(run_id, query, v, count, url)
            worker_id, kind = await self.start_worker(job, agent)
        except Exception as exc:  # no image, engine down, name taken...
            logger.warning("variation %s/%d did not start: %r", run_id, index, exc)
            await self.runs.finish(run_id, index, "failed", reason="the container did not start")
            return
        started = time.time()
        await self.runs.update_variation(
            run_id, index, container=worker_id, started_at=started, worker=kind
        )
        start_ms = round((started - began) * 1000)
        data = {"variation": index, "container": worker_id[:12], "start_ms": start_ms}
        await self.runs.add_event(run_id, "container_started", {**data, "worker": kind})
        if kind == "warm":  # a cold worker has its job in its environment already
            await self.pool.hand_over(job, agent)

    async def reap(self) -> dict:
        """One pass over this deployment's containers: record exits, enforce deadlines, remove
        orphans (their run ended, was cancelled or expired), and fail variations whose container
        vanished. At start-up the same pass sweeps what a previous API left and adopts the rest."""
        listed_at = time.time()
        await self.pool.mark_alive()
        users = await self.users.listed()  # before anything is worked out (WorkerUsers.sweep)
        listed = await asyncio.to_thread(self.workers.list)
        seen, counts = set(), {"adopted": 0, "removed": 0, "ended": 0}
        for w in await self.pool.with_jobs(listed):  # a warm worker's job: the pool knows it
            seen.add((w.run_id, w.index))
            try:
                counts[await self.reap_one(w)] += 1
            except redis_access.redis.RedisError:
                raise  # Redis away: the whole pass fails, and forever() says so in one line
            except Exception:  # one container we cannot handle: the rest go on, it waits a pass
                logger.exception("reaping variation %s/%d failed", w.run_id, w.index)
        variations = await self.reaper_runs.variations_of_active()
        for (run_id, i), v in variations.items():
            started = float(v.get("started_at") or "inf")
            gone = v.get("status") == "running" and (run_id, i) not in seen and started < listed_at
            if gone and not await self.recovery.adopted(run_id, i):  # vanished, not adopted
                reason = "the container disappeared"
                await self.reaper_runs.finish(run_id, i, "failed", reason=reason)
        await self.users.tend(users, variations, self.pool.wanted_users())
        await self.pool.tend(listed, listed_at)
        return counts

    async def reap_one(self, w: docker_workers.Worker) -> str:
        runs, s = self.reaper_runs, self.settings
        if not w.run_id:  # a worker no run claims
            await asyncio.to_thread(self.workers.remove, w.id)
            return "removed"
        v = await runs.variation(w.run_id, w.index)
        if await runs.status(w.run_id) != "running" or v.get("status") in store.ENDED:
            await asyncio.to_thread(self.workers.remove, w.id)
            return "removed"
        if not w.running:  # how it ended: lesson05/docker_workers.py
            await self.relay.drain(w.run_id, w.index)  # its last events, before variation_done
            v = await runs.variation(w.run_id, w.index)
            status, details = await docker_workers.ending(self.workers, w, v, s.WORKER_MEMORY)
            await runs.finish(w.run_id, w.index, status, **details)
            await asyncio.to_thread(self.workers.remove, w.id)
            return "ended"
        if time.time() > float(v.get("deadline") or "inf"):
            await asyncio.to_thread(self.workers.remove, w.id)
            reason = f"no answer within {s.VARIATION_TIMEOUT_SECONDS:g} s: the container was killed"
            await runs.finish(w.run_id, w.index, "timed_out", reason=reason)
            return "ended"
        return "adopted"


# === The event stream: XREAD from the client's last id, every entry one SSE event with that id ===

STREAM_ID = r"^\d{1,20}-\d{1,20}$"


async def follow(runs: Runs, run_id: str, last_id: str, request: Request):
    """Replay from last_id ("0-0" for a new client), then wait for new entries until `run_done`."""
    yield ServerSentEvent(comment="resuming after " + last_id, retry=1000)
    if lost := await runs.lost_events(run_id, last_id):  # trimmed by the cap: told, never skipped
        yield lost
    while not await request.is_disconnected():
        # Read the status first: once it is not `running`, every event of the run is already in
        # the stream, so what XREAD returns now is the rest, and an empty read is the end.
        running = await runs.status(run_id) == "running"
        entries = await runs.read_events(run_id, last_id, block_ms=1000 if running else None)
        if not entries:
            if running:
                continue
            return
        for entry_id, fields in entries:
            last_id = entry_id
            data = fields["data"]  # JSON already, written by the API or the relay: sent raw
            yield ServerSentEvent(id=entry_id, event=fields["event"], raw_data=data)
            if fields["event"] == "run_done":
                return


async def stream_start(
    run_id: OwnedRun,
    request: Request,
    _: Annotated[None, Depends(guards.stream_slot)],
    after: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
    last_event_id: Annotated[str | None, Header(pattern=STREAM_ID)] = None,
) -> str:
    """The id the stream starts after. Every answer with a status of its own comes from here,
    before the 200 is sent: first, as its own dependencies, the owner's token (401, 403, 404) and
    a free stream slot (429, 503; held until the stream ends); then 400 and 204."""
    view = await routes.existing(request, run_id)
    start = last_event_id or after or "0-0"
    newest_id = await request.app.state.stream_runs.newest_event_id(run_id)
    if id_tuple(start) > id_tuple(newest_id):  # never sent: the client would wait forever
        message = f"event id {start} is past the newest event of run {run_id} ({newest_id})"
        raise ApiError(400, "unknown_event_id", message)
    # An ended run with nothing after `start`: 204, the answer that stops EventSource retrying.
    if view["status"] != "running" and id_tuple(start) == id_tuple(newest_id):
        raise ApiError(204, "no_more_events", f"run {run_id} has ended; nothing follows {start}")
    return start


# === The HTTP API ===


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    # Redis pools sized on purpose (lesson05/store.py): routes, streams, reaper, relay.
    clients = store.redis_clients(settings)
    await clients[0].ping()
    own_workers = app.state.workers is None
    workers = app.state.workers or docker_workers.DockerWorkers(settings)
    await asyncio.to_thread(workers.check)
    runs = [Runs(client, settings) for client in clients]
    # The Orchestrator and its collaborators from code/lesson05/, composed here and only here;
    # lesson 09's spans are wrapped around its launches (lesson05/traces.py).
    users = redis_access.WorkerUsers(clients[0], settings.REDIS_URL, settings.WORKER_REDIS_URL)
    pool = warm.WarmPool(settings, workers, users, worker_settings(settings), runs[0], runs[2])
    caps, adoption = guards.PerClientCaps(settings, runs[0]), Adoption(runs[2])
    orchestrator = Orchestrator(
        settings, runs[0], workers, runs[2], caps=caps, users=users, pool=pool, recovery=adoption
    )
    app.state.orchestrator = trace_launches(orchestrator)  # the same one, its launches in spans
    app.state.stream_runs = runs[1]
    app.state.stream_slots = guards.StreamSlots(settings)
    # Before serving, the start-up sweep: leftovers removed, live runs adopted.
    logger.info("start-up sweep: %s", await orchestrator.reap())
    every, stopping = settings.REAP_INTERVAL_SECONDS, asyncio.Event()  # the reaper: a pass, and
    reaper = asyncio.create_task(  # again, Redis down or not, until `stopping` is set
        redis_access.forever("a reaper pass", every, orchestrator.reap, stopping)
    )
    relay = redis_access.Relay(runs[3])  # workers' events into runs' (lesson05/redis_access.py)
    relaying = asyncio.create_task(redis_access.relay_forever(relay, runs[3].running, stopping))
    address = settings.REDIS_URL.rpartition("@")[2]  # never the password in a log
    logger.info("variations API ready: image %s, Redis %s", settings.WORKER_IMAGE, address)
    yield
    stopping.set()
    for task in (reaper, relaying):
        task.cancel()
    await asyncio.wait([reaper, relaying], timeout=10)
    await pool.close()  # its idle workers go; the workers going finish on their own
    if own_workers:
        workers.close()
    for client in clients:
        await client.aclose()


def create_app(settings: Settings | None = None, workers=None) -> FastAPI:
    """`workers` replaces the Docker backend (the tests run workers as local processes)."""
    settings = settings or Settings()
    app = FastAPI(
        title="Agent variations",
        lifespan=lifespan,
        dependencies=[Depends(guards.host_check(settings))],
        telemetry=TELEMETRY,  # lesson 09: a server span per request, once tracing is on
    )
    app.state.settings, app.state.workers = settings, workers
    trace_runs()  # with OTEL_EXPORTER_OTLP_ENDPOINT set, a run is one trace (lesson05/traces.py)

    @app.post("/v1/runs", status_code=202, responses=routes.ERRORS)
    async def create_run(body: RunRequest, request: Request, response: Response) -> RunCreated:
        """Start one container per variation; follow them at /v1/runs/{run_id}/events."""
        guards.allowed_models(body.overrides, settings)
        token = secrets.token_urlsafe(32)  # the run's owner: Redis keeps only its hash
        owner = token_hash(token)
        created = await request.app.state.orchestrator.create(body, request.client.host, owner)
        run_id = created["run_id"]
        guards.owner_cookie(response, token, run_id, settings)
        links = {"events": f"/v1/runs/{run_id}/events", "status": f"/v1/runs/{run_id}"}
        return RunCreated(**created, **links, owner_token=token)

    # [start:run_events]
    @app.get(
        "/v1/runs/{run_id}/events",
        response_class=EventSourceResponse,  # FastAPI's SSE: its headers, pings and schema
        responses=routes.STREAM_RESPONSES,
    )
    async def run_events(
        run_id: OwnedRun, start: Annotated[str, Depends(stream_start)], request: Request
    ) -> AsyncIterable[ServerSentEvent]:
        """SSE, every variation in one stream. Each event's `id` is its Redis Stream id: reconnect
        with `Last-Event-ID` (or `?after=`) to resume right after it; no id replays the run."""
        events = follow(request.app.state.stream_runs, run_id, start, request)
        async for event in redis_access.or_failure(events, run_id):  # Redis gone: `error`
            yield event
        # [end:run_events]

    # Request ids, the error shape, the page, /health, /ready; read, cancel, pick a run.
    routes.add_other_routes(app, page=Path(__file__).with_name("variations_page.html"))
    return app


if __name__ == "__main__":
    settings = Settings()
    uvicorn.run(
        create_app(settings),
        host=settings.HOST,
        port=settings.PORT,
        log_config=None,
        timeout_graceful_shutdown=5,  # open event streams end; their clients resume elsewhere
        # The per-client caps count socket addresses: no X-Forwarded-For, nothing in front to trust.
        proxy_headers=False,
    )
