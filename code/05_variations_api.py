"""Lesson 05: one question, N variations of the research agent in parallel containers, on one page.

Run it:  make lesson-05  (builds the image, starts Redis on its own Docker network, serves this API)
Open http://127.0.0.1:8000, ask with 3 variations, watch the columns fill, reload, pick one.

    browser ──POST /v1/runs──▶ this API ──Docker SDK──▶ N worker containers (research-agent image,
       ▲                          │                      `python -m app.worker`, one variation each)
       │                          │ XREAD BLOCK                     │ XADD every event
       └──SSE: id = stream id ◀───┴──────── Redis Stream run:{id}:events ◀──┘

The API holds no run state in memory: runs, variations and events live in Redis, the workers run on
their own, so the API can restart mid-run and its clients resume with Last-Event-ID. In order: the
settings, the request, the Redis layout, the containers, the run lifecycle (start, reap, cancel),
the event stream, the routes. The page is 05_variations_page.html.
"""

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
import time
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import docker
import redis.asyncio as redis
import uvicorn
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings
from sse_starlette import EventSourceResponse, ServerSentEvent

# What a worker is given, the Redis keys it writes and what its exit code means are the worker's
# contract, defined once in the research agent's image (app/job.py): this API imports it too, and
# takes the research agent's rule for which X-Request-ID to keep.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research-agent"))
from app import job as contract  # noqa: E402
from app.error_shape import ErrorResponse, error_body, install_shape_handlers  # noqa: E402
from app.job import EXIT_REASONS as WORKER_EXIT_REASONS  # noqa: E402
from app.job import AnswerStyle, Job, events_key, variation_key, warm_queue_key  # noqa: E402
from app.request_ids import log_with_request_ids, safe_request_id  # noqa: E402
from variations_redis import Backoff, Relay, WorkerUsers, or_failure, relay_forever  # noqa: E402

log_with_request_ids()
logger = logging.getLogger("variations")

PAGE = Path(__file__).with_name("05_variations_page.html")


# === Settings: the only place that reads the environment ===


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # Host names this API answers to (a JSON list): any other Host header, such as a page's own
    # name rebound to 127.0.0.1 by its DNS, gets 400.
    ALLOWED_HOSTS: list[str] = ["127.0.0.1", "localhost"]
    # How this API reaches Redis, as its user `api` (scripts/lesson-05.sh prints it).
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    # The same Redis, seen from a worker; each worker gets a user of its own (variations_redis.py).
    WORKER_REDIS_URL: str = "redis://lesson-05-redis:6379/0"
    WORKER_IMAGE: str = "research-agent:optimized"
    WORKER_NETWORK: str = "lesson-05"
    DEPLOYMENT: str = "lesson-05"  # labels this API's containers: only these are swept or adopted
    # Limits of each worker container, and of the whole service.
    WORKER_MEMORY: str = "512m"
    WORKER_CPUS: float = 1.0
    WORKER_PIDS: int = 128
    MAX_ACTIVE_RUNS: int = 2
    MAX_RUNS_PER_CLIENT: int = 1  # per client address, so one client cannot hold every slot
    VARIATION_TIMEOUT_SECONDS: float = 120.0
    # Warm workers: containers started ahead, imports done, each waiting for one variation (0: off).
    # One older than WARM_MAX_AGE_SECONDS gets no job and is replaced; should this API be gone, it
    # leaves by itself once the API's alive key (renewed by every reaper pass) has expired.
    WARM_WORKERS: int = Field(0, ge=0, le=16)
    WARM_MAX_AGE_SECONDS: float = Field(240.0, gt=0)
    STREAM_MAXLEN: int = 5000  # entries kept in one run's stream
    RUN_TTL_SECONDS: int = 3600  # how long a finished run stays readable
    REAP_INTERVAL_SECONDS: float = 0.25
    # Each open event stream holds a Redis connection (XREAD BLOCK): they are capped, and get a
    # pool of their own, so followers can never take the connections of the routes or the reaper.
    MAX_STREAMS: int = 32
    MAX_STREAMS_PER_CLIENT: int = 4
    REDIS_CONNECTIONS: int = 16  # for the routes; the reaper has 2 more of its own
    # Passed on to every worker.
    OFFLINE_TOKEN_DELAY_MS: int = 40
    ALLOWED_MODELS: list[str] = ["gpt-4o-mini"]  # what `overrides[].model` may ask for
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None


# === The request: a query and how many variations; each variation differs visibly ===


class Variation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    style: AnswerStyle | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    search_depth: int | None = Field(None, ge=1, le=8, description="search results to read")
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9._:/-]{1,64}$", description="online only")


# What variation i is when the request does not say: style, temperature and search depth all change.
PRESETS = [
    Variation(style="bullets", temperature=0.0, search_depth=4),
    Variation(style="brief", temperature=0.0, search_depth=4),
    Variation(style="detailed", temperature=0.0, search_depth=2),
    Variation(style="bullets", temperature=0.9, search_depth=6),
    Variation(style="brief", temperature=0.9, search_depth=6),
    Variation(style="detailed", temperature=0.9, search_depth=3),
    Variation(style="bullets", temperature=0.0, search_depth=1),
    Variation(style="detailed", temperature=1.5, search_depth=5),
]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=3, max_length=2000)
    variations: int = Field(3, ge=1, le=len(PRESETS))
    overrides: list[Variation] = Field(default_factory=list, max_length=len(PRESETS))

    @field_validator("query")
    @classmethod
    def printable(cls, query: str) -> str:
        query = query.strip()
        if len(query) < 3 or re.search(r"[\x00-\x08\x0b-\x1f\x7f]", query):
            raise ValueError("the query needs 3+ characters and no control characters")
        return query

    @model_validator(mode="after")
    def overrides_fit(self) -> "RunRequest":
        if len(self.overrides) > self.variations:
            raise ValueError(f"{len(self.overrides)} overrides for {self.variations} variations")
        return self

    def resolved(self) -> list[dict]:
        """Each variation's settings: its preset, with the request's overrides on top."""
        result = []
        for i in range(self.variations):
            given = self.overrides[i] if i < len(self.overrides) else Variation()
            merged = PRESETS[i].model_dump() | given.model_dump(exclude_none=True)
            result.append({"index": i, **merged})
        return result


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variation: int = Field(ge=0, le=len(PRESETS) - 1)


class VariationSettings(BaseModel):
    index: int
    style: AnswerStyle
    temperature: float
    search_depth: int
    model: str | None


class RunCreated(BaseModel):
    run_id: str
    owner_token: str = Field(description="send as `Authorization: Bearer` to read, cancel or pick")
    variations: list[VariationSettings]
    events: str
    status: str


class VariationView(VariationSettings):
    status: Literal["starting", "running", "succeeded", "failed", "timed_out", "cancelled"]
    container: str | None
    worker: Literal["warm", "cold"] | None = Field(
        description="warm: a worker started ahead, imports done; cold: a container started for it"
    )
    exit_code: int | None
    reason: str | None
    response: str | None
    sources: list[dict]
    error: dict | None


class RunView(BaseModel):
    run_id: str
    query: str
    status: Literal["running", "done", "cancelled"]
    created_at: float
    selected: int | None
    variations: list[VariationView]


class ApiError(Exception):
    def __init__(self, status: int, error_type: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message, self.headers = (
            status,
            error_type,
            message,
            headers,
        )


# === Redis: every run is three keys, and one script ends a variation exactly once ===
#   run:{id}          hash: query, status (running, done, cancelled), variations, running, selected,
#                     client, owner
#   run:{id}:v:{i}    hash per variation: settings, status, container, deadline, result, error
#   run:{id}:events   stream of {event, data}; data is JSON and always names its variation
#   (the worker writes these two as well: variation_key and events_key come from app/job.py)
#   runs:active       set of running run ids (the concurrency limit)

ENDED = ("succeeded", "failed", "timed_out", "cancelled")

# The reaper, a cancel and a restarted API may all try to end one variation: the script checks and
# updates in one step, adds `variation_done`, and the last variation adds `run_done` and the TTL.
FINISH_VARIATION = """
if redis.call('HEXISTS', KEYS[1], 'status') == 0 then return 0 end  -- the run expired
local status = redis.call('HGET', KEYS[4], 'status')
if status == 'succeeded' or status == 'failed' or status == 'timed_out' then return 0 end
if status == 'cancelled' then return 0 end
redis.call('HSET', KEYS[4], 'status', ARGV[1], 'ended', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'event', 'variation_done', 'data', ARGV[2])
if redis.call('HINCRBY', KEYS[1], 'running', -1) > 0 then return 1 end
local run_status = 'done'
if redis.call('HEXISTS', KEYS[1], 'cancelled') == 1 then run_status = 'cancelled' end
redis.call('HSET', KEYS[1], 'status', run_status)
redis.call('SREM', KEYS[3], ARGV[5])
local data = '{"variation": null, "status": "' .. run_status .. '"}'
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'event', 'run_done', 'data', data)
for i = 1, #KEYS do
  if i ~= 3 then redis.call('EXPIRE', KEYS[i], ARGV[4]) end
end
return 2
"""


def run_key(run_id: str) -> str:
    return f"run:{run_id}"


class Runs:
    """The runs in Redis. Every method is one or two round trips; nothing is cached in memory."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.client, self.settings = client, settings
        self._finish = client.register_script(FINISH_VARIATION)

    async def add_event(self, run_id: str, event: str, data: dict) -> str:
        fields = {"event": event, "data": json.dumps(data)}
        return await self.client.xadd(
            events_key(run_id), fields, maxlen=self.settings.STREAM_MAXLEN
        )

    async def create(
        self, run_id: str, query: str, variations: list[dict], client: str, owner: str
    ) -> None:
        async with self.client.pipeline(transaction=True) as tx:
            tx.hset(
                run_key(run_id),
                mapping={
                    "query": query,
                    "client": client,  # the address that created it, for its per-client cap
                    "owner": owner,  # a hash of its owner token: Redis never holds the token
                    "status": "running",
                    "created_at": time.time(),
                    "variations": len(variations),
                    "running": len(variations),
                },
            )
            for v in variations:
                key = variation_key(run_id, v["index"])
                tx.hset(key, mapping={"settings": json.dumps(v), "status": "starting"})
                # The worker's stream exists from now, so that it expires like the rest.
                stream = contract.worker_events_key(run_id, v["index"])
                tx.xgroup_create(stream, "created", mkstream=True).xgroup_destroy(stream, "created")
            tx.sadd("runs:active", run_id)
            data = {"variation": None, "query": query, "variations": variations}
            fields = {"event": "run_started", "data": json.dumps(data)}
            tx.xadd(events_key(run_id), fields, maxlen=self.settings.STREAM_MAXLEN)
            # Should no API be left to end the run, its keys still expire (the last variation's
            # end sets RUN_TTL_SECONDS from then on).
            ttl = int(self.settings.VARIATION_TIMEOUT_SECONDS) + self.settings.RUN_TTL_SECONDS
            for key in self.keys(run_id, len(variations)):
                tx.expire(key, ttl)
            await tx.execute()

    def keys(self, run_id: str, count: int) -> list[str]:
        """The run's hash and stream, then each variation's hash and worker stream."""
        per_variation = (variation_key, contract.worker_events_key)
        return [run_key(run_id), events_key(run_id)] + [
            key(run_id, i) for i in range(count) for key in per_variation
        ]

    async def status(self, run_id: str) -> str | None:
        return await self.client.hget(run_key(run_id), "status")

    async def count(self, run_id: str) -> int:
        """How many variations the run has (0 once it has expired)."""
        return int(await self.client.hget(run_key(run_id), "variations") or 0)

    async def owner(self, run_id: str) -> str | None:
        """The hash of the run's owner token; None when there is no such run."""
        return await self.client.hget(run_key(run_id), "owner")

    async def client_of(self, run_id: str) -> str | None:
        return await self.client.hget(run_key(run_id), "client")

    async def mark_cancelled(self, run_id: str) -> None:
        await self.client.hset(run_key(run_id), "cancelled", 1)

    async def select(self, run_id: str, index: int) -> None:
        await self.client.hset(run_key(run_id), "selected", index)

    async def variation(self, run_id: str, index: int) -> dict:
        return await self.client.hgetall(variation_key(run_id, index))

    async def update_variation(self, run_id: str, index: int, **fields) -> None:
        await self.client.hset(variation_key(run_id, index), mapping=fields)

    async def finish(self, run_id: str, index: int, status: str, **details) -> bool:
        """End one variation (once); returns False when it had already ended."""
        count = await self.count(run_id)
        keys = [run_key(run_id), events_key(run_id), "runs:active", variation_key(run_id, index)]
        keys += [k for k in self.keys(run_id, count)[2:] if k != variation_key(run_id, index)]
        data = json.dumps({"variation": index, "status": status, **details})
        args = [status, data, self.settings.STREAM_MAXLEN, self.settings.RUN_TTL_SECONDS, run_id]
        return await self._finish(keys=keys, args=args) != 0

    async def active(self) -> set[str]:
        return await self.client.smembers("runs:active")

    async def running(self) -> list[tuple[str, int]]:
        """(run id, variation) of every variation of the runs going (the relay checks which run)."""
        return [(r, i) for r in await self.active() for i in range(await self.count(r))]

    async def send_job(self, worker: str, job: dict[str, str]) -> None:
        """A warm worker's one job, onto the list it waits on; gone in a minute if not taken."""
        key = warm_queue_key(self.settings.DEPLOYMENT, worker)
        async with self.client.pipeline(transaction=True) as tx:
            tx.rpush(key, json.dumps(job))
            tx.expire(key, 60)
            await tx.execute()

    async def containers_of_active(self) -> dict[str, tuple[str, int]]:
        """container id -> (run id, variation), for the variations of the runs going: how the
        reaper knows which job a warm worker (whose labels name none) is doing."""
        found = {}
        for run_id in await self.active():
            for i in range(await self.count(run_id)):
                container = await self.client.hget(variation_key(run_id, i), "container")
                if container:
                    found[container] = (run_id, i)
        return found

    async def read_events(self, run_id: str, after: str, block_ms: int | None) -> list:
        """Up to 200 (id, fields) entries after the given id, waiting up to block_ms for one."""
        found = await self.client.xread({events_key(run_id): after}, count=200, block=block_ms)
        return found[0][1] if found else []

    async def newest_event_id(self, run_id: str) -> str:
        newest = await self.client.xrevrange(events_key(run_id), count=1)
        return newest[0][0] if newest else "0-0"

    async def trimmed(self, run_id: str) -> tuple[int, str]:
        """How many events the stream's cap has trimmed, and the id of the oldest one kept."""
        info = await self.client.xinfo_stream(events_key(run_id))
        first = info["first-entry"][0] if info["first-entry"] else "0-0"
        return info["entries-added"] - info["length"], first

    async def view(self, run_id: str) -> dict | None:
        run = await self.client.hgetall(run_key(run_id))
        if not run:
            return None
        variations = []
        for i in range(int(run["variations"])):
            v = await self.variation(run_id, i)
            ended = json.loads(v.get("ended", "{}"))
            result = json.loads(v["result"]) if "result" in v else None
            variations.append(
                {
                    **json.loads(v["settings"]),
                    "status": v.get("status"),
                    "container": v.get("container"),
                    "worker": v.get("worker"),
                    "exit_code": ended.get("exit_code"),
                    "reason": ended.get("reason"),
                    "response": result["response"] if result else None,
                    "sources": result["sources"] if result else [],
                    "error": json.loads(v["error"]) if "error" in v else None,
                }
            )
        selected = run.get("selected")
        return {
            "run_id": run_id,
            "query": run["query"],
            "status": run["status"],
            "created_at": float(run["created_at"]),
            "selected": int(selected) if selected is not None else None,
            "variations": variations,
        }


# === Docker: one labelled, resource-limited container per variation ===
# The Docker SDK blocks (HTTP to the engine): each method runs in a thread, never on the event loop.


@dataclass
class Worker:
    id: str
    run_id: str  # "" for a warm worker: its job is known to the API and Redis, not to its labels
    index: int
    running: bool
    warm: str | None = None  # a warm worker's name (its queue's), else None


class DockerWorkers:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.client = docker.from_env(timeout=60)
        self.labels = {
            "ai-course.role": "variation-worker",
            "ai-course.deployment": settings.DEPLOYMENT,
        }

    def check(self) -> None:
        try:
            self.client.images.get(self.settings.WORKER_IMAGE)
        except docker.errors.ImageNotFound:
            raise RuntimeError(
                f"image {self.settings.WORKER_IMAGE} not found: `make lesson-05` builds it"
            ) from None

    def start(self, run_id: str, index: int, environment: dict[str, str]) -> str:
        return self._run(
            ["python", "-m", "app.worker"],  # a list: no shell ever parses the query
            environment,  # the job travels as data
            name=f"{self.settings.DEPLOYMENT}-{run_id[:12]}-{index}",
            labels={"ai-course.run": run_id, "ai-course.variation": str(index)},
        )

    def start_warm(self, name: str, environment: dict[str, str]) -> str:
        """A worker with no job yet: the same image, flags and limits, `--warm` (app/worker.py)."""
        return self._run(
            ["python", "-m", "app.worker", "--warm"],
            environment,
            name=name,
            labels={"ai-course.run": "", "ai-course.variation": "-1", "ai-course.warm": name},
        )

    def _run(self, command: list[str], environment: dict[str, str], name: str, labels: dict) -> str:
        s = self.settings
        container = self.client.containers.run(
            s.WORKER_IMAGE,
            command,
            environment=environment,
            name=name,
            labels={**self.labels, **labels},
            detach=True,
            network=s.WORKER_NETWORK,
            mem_limit=s.WORKER_MEMORY,
            memswap_limit=s.WORKER_MEMORY,  # no swap: over the limit means OOM-killed, not slow
            nano_cpus=int(s.WORKER_CPUS * 1e9),
            pids_limit=s.WORKER_PIDS,
            read_only=True,
            tmpfs={"/tmp": "size=16m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            # The image's HEALTHCHECK asks an HTTP port that workers never open: switch it off.
            healthcheck={"test": ["NONE"]},
        )
        return container.id

    def list(self) -> list[Worker]:
        filters = {"label": [f"{k}={v}" for k, v in self.labels.items()]}
        found = self.client.containers.list(all=True, sparse=True, filters=filters)
        return [
            Worker(
                id=c.id,
                run_id=c.attrs["Labels"]["ai-course.run"],
                index=int(c.attrs["Labels"]["ai-course.variation"]),
                running=c.attrs["State"] in ("created", "running", "restarting"),
                warm=c.attrs["Labels"].get("ai-course.warm") or None,
            )
            for c in found
        ]

    def outcome(self, worker_id: str) -> tuple[int, bool]:
        state = self.client.containers.get(worker_id).attrs["State"]
        return state["ExitCode"], state["OOMKilled"]

    def logs(self, worker_id: str) -> str:
        return self.client.containers.get(worker_id).logs(tail=20).decode(errors="replace")

    def remove(self, worker_id: str) -> None:
        try:
            self.client.containers.get(worker_id).remove(force=True)  # kills it if still running
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # 409 "removal already in progress": another remove (a second DELETE, the reaper)
            # got there first. Wait (10 s at most) until it is done, so that an answered DELETE
            # means the container is gone, whichever request did the work.
            if exc.status_code != 409:
                raise
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    self.client.containers.get(worker_id)
                except docker.errors.NotFound:
                    return
                time.sleep(0.1)


# === Warm workers: started ahead with their imports done, each for exactly one variation ===


class WarmPool:
    """WARM_WORKERS containers that wait (BLPOP on a list of their own) for one job. A variation
    takes an idle one if there is one, else starts a cold container as always; a taken worker runs
    its variation under the same labels' deployment, deadline and reaper, then exits: never reused.
    The reaper's pass tends the pool: it removes the ones that left or grew old, and tops it up."""

    def __init__(self, settings: Settings, workers: "DockerWorkers", users: WorkerUsers):
        self.settings, self.workers, self.users = settings, workers, users
        self.starting: set[str] = set()  # names
        self.idle: dict[str, tuple[str, float]] = {}  # name -> (container id, started at)
        self.taken: dict[str, tuple[str, int, float]] = {}  # name -> (run id, variation, when)
        self.tasks: set[asyncio.Task] = set()
        self.retry_at = 0.0  # after a failed start, the next try waits (no image: no busy loop)
        self.closed = False

    async def environment(self, name: str) -> dict[str, str]:
        s = self.settings
        queue, alive = warm_queue_key(s.DEPLOYMENT, name), contract.warm_alive_key(s.DEPLOYMENT)
        env = {
            # Its own user: its list and nothing else; the job it pops brings its variation's.
            "REDIS_URL": await self.users.warm(name, queue, contract.warm_ready_key(queue), alive),
            "WARM_QUEUE": queue,
            "WARM_ALIVE": alive,
            "WARM_IDLE_SECONDS": str(s.WARM_MAX_AGE_SECONDS + 60),
            "OFFLINE_TOKEN_DELAY_MS": str(s.OFFLINE_TOKEN_DELAY_MS),
        }
        if s.OPENAI_API_KEY:  # here, never in its job: nothing secret travels through Redis
            env["OPENAI_API_KEY"] = s.OPENAI_API_KEY.get_secret_value()
        if s.OPENAI_BASE_URL:
            env["OPENAI_BASE_URL"] = s.OPENAI_BASE_URL
        return env

    def take(self, run_id: str, index: int) -> tuple[str, str] | None:
        """An idle worker young enough to wait for a job, now this variation's: (name, id)."""
        young = time.time() - self.settings.WARM_MAX_AGE_SECONDS
        for name, (worker_id, started) in list(self.idle.items()):
            if started >= young:
                del self.idle[name]  # no await between choosing and taking: no one else gets it
                self.taken[name] = (run_id, index, time.time())
                return name, worker_id
        return None

    def job_of(self, w: Worker) -> tuple[str, int] | None:
        taken = self.taken.get(w.warm or "")
        return (taken[0], taken[1]) if taken else None

    def owns_idle(self, w: Worker) -> bool:
        return w.warm in self.starting or w.warm in self.idle

    async def tend(self, listed: list[Worker], listed_at: float) -> None:
        """Called by each reaper pass with what it listed: drop what left or grew old, top up."""
        running = {w.warm for w in listed if w.warm and w.running}
        names = {w.warm for w in listed if w.warm}
        young = time.time() - self.settings.WARM_MAX_AGE_SECONDS
        for name, (worker_id, started) in list(self.idle.items()):
            if started < listed_at and (name not in running or started < young):
                if name not in running:  # it should wait WARM_MAX_AGE_SECONDS + 60 s: say so
                    logger.warning("warm worker %s left while idle; replacing it", name)
                del self.idle[name]
                await asyncio.to_thread(self.workers.remove, worker_id)
        for name, (_, _, when) in list(self.taken.items()):
            if when < listed_at and name not in names:  # removed after its variation
                del self.taken[name]
        missing = self.settings.WARM_WORKERS - len(self.idle) - len(self.starting)
        if self.closed or time.time() < self.retry_at:
            return
        for _ in range(max(0, missing)):
            task = asyncio.create_task(self.add_one())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def add_one(self) -> None:
        name = f"{self.settings.DEPLOYMENT}-warm-{uuid.uuid4().hex[:12]}"
        self.starting.add(name)
        try:
            environment = await self.environment(name)
            worker_id = await asyncio.to_thread(self.workers.start_warm, name, environment)
        except Exception as exc:
            logger.warning("a warm worker did not start (retrying in 10 s): %r", exc)
            self.retry_at = time.time() + 10
            return
        finally:
            self.starting.discard(name)
        if self.closed:
            await asyncio.to_thread(self.workers.remove, worker_id)
        else:
            self.idle[name] = (worker_id, time.time())

    async def close(self) -> None:
        """On shutdown: the idle ones are removed; taken ones finish, as every variation does."""
        self.closed = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        idle, self.idle = list(self.idle.values()), {}
        await asyncio.gather(*(asyncio.to_thread(self.workers.remove, i) for i, _ in idle))


# === The run lifecycle: start the workers, reap them as they exit, cancel ===

EXIT_REASONS = {
    **WORKER_EXIT_REASONS,  # 1 to 3: the worker's own codes
    137: "killed (SIGKILL): out of memory or stopped from outside",
}


class Orchestrator:
    def __init__(self, settings: Settings, runs: Runs, workers: DockerWorkers, pool: WarmPool):
        self.settings, self.runs, self.workers, self.pool = settings, runs, workers, pool
        self.users = WorkerUsers(runs.client, settings.REDIS_URL, settings.WORKER_REDIS_URL)
        self.relay = Relay(runs.client, settings.STREAM_MAXLEN)
        self.starting: dict[str, asyncio.Task] = {}
        self.lock = asyncio.Lock()

    def environment(
        self, run_id: str, query: str, v: dict, count: int, url: str, secrets: bool = True
    ) -> dict[str, str]:
        s = self.settings
        # Room in the stream for each variation's tokens, after every other event of the run.
        token_budget = max(0, (s.STREAM_MAXLEN - 3 - 12 * count) // count)
        job = Job(
            RUN_ID=run_id,
            VARIATION=v["index"],
            QUERY=query,
            ANSWER_STYLE=v["style"],
            REDIS_URL=url,  # as the variation's own Redis user
            STREAM_MAXLEN=s.STREAM_MAXLEN,
            TOKEN_BUDGET=token_budget,
        )
        return job.to_env(  # the agent's own settings, for what the variation changes
            secrets,
            TEMPERATURE=v["temperature"],
            SEARCH_MAX_RESULTS=v["search_depth"],
            MODEL_NAME=v.get("model"),
            OFFLINE_TOKEN_DELAY_MS=s.OFFLINE_TOKEN_DELAY_MS,
            # The agent gives up a little before the container is killed, so it can say why.
            REQUEST_TIMEOUT_SECONDS=max(1.0, s.VARIATION_TIMEOUT_SECONDS - 5),
            OPENAI_API_KEY=s.OPENAI_API_KEY,
            OPENAI_BASE_URL=s.OPENAI_BASE_URL,
        )

    async def create(self, request: RunRequest, client: str, owner: str) -> dict:
        variations = request.resolved()
        s, retry = self.settings, {"Retry-After": "5"}
        async with self.lock:  # check and add in one step, or two requests could both pass
            active = await self.runs.active()
            if len(active) >= s.MAX_ACTIVE_RUNS:
                raise ApiError(
                    429,
                    "too_many_runs",
                    f"{s.MAX_ACTIVE_RUNS} runs are already running; "
                    "wait for one to finish or cancel one",
                    headers=retry,
                )
            clients = [await self.runs.client_of(r) for r in active]
            if clients.count(client) >= s.MAX_RUNS_PER_CLIENT:
                message = f"you have {s.MAX_RUNS_PER_CLIENT} runs going; wait for one or cancel one"
                raise ApiError(429, "too_many_client_runs", message, headers=retry)
            run_id = uuid.uuid4().hex
            await self.runs.create(run_id, request.query, variations, client, owner)
        task = asyncio.create_task(self.start_all(run_id, request.query, variations))
        self.starting[run_id] = task
        task.add_done_callback(lambda _: self.starting.pop(run_id, None))
        return {"run_id": run_id, "variations": variations}

    async def start_all(self, run_id: str, query: str, variations: list[dict]) -> None:
        await asyncio.gather(
            *(self.start_one(run_id, query, v, len(variations)) for v in variations)
        )

    async def start_one(self, run_id: str, query: str, v: dict, count: int) -> None:
        index, began = v["index"], time.time()
        deadline = began + self.settings.VARIATION_TIMEOUT_SECONDS
        await self.runs.update_variation(run_id, index, status="running", deadline=deadline)
        warm = self.pool.take(run_id, index)  # (name, id) of a worker started ahead, if one waits
        try:
            url = await self.users.variation(run_id, index)
            env = self.environment(run_id, query, v, count, url, secrets=not warm)
            worker_id = (
                warm[1] if warm else await asyncio.to_thread(self.workers.start, run_id, index, env)
            )
        except Exception as exc:  # no image, engine down, name taken...
            logger.warning("variation %s/%d did not start: %r", run_id, index, exc)
            await self.runs.finish(run_id, index, "failed", reason="the container did not start")
            return
        started, kind = time.time(), "warm" if warm else "cold"
        await self.runs.update_variation(
            run_id, index, container=worker_id, started_at=started, worker=kind
        )
        start_ms = round((started - began) * 1000)
        data = {"variation": index, "container": worker_id[:12], "start_ms": start_ms}
        await self.runs.add_event(run_id, "container_started", {**data, "worker": kind})
        if warm:
            await self.runs.send_job(warm[0], env)  # the same variables a cold worker gets

    async def reap_forever(self) -> None:
        backoff = Backoff("a reaper pass", self.settings.REAP_INTERVAL_SECONDS)
        while True:
            try:
                await self.reap()
                wait = backoff.ok()
            except (redis.RedisError, docker.errors.DockerException, OSError) as exc:
                wait = backoff.failed(exc)  # Redis or the engine away: one line, less often
            except Exception:
                logger.exception("reaper pass failed; retrying")
                wait = backoff.failed(RuntimeError("see the traceback above"))
            await asyncio.sleep(wait)

    async def reap(self) -> dict:
        """One pass over this deployment's containers: record exits, enforce deadlines, remove
        orphans (their run ended, was cancelled or expired), and fail variations whose container
        vanished. At start-up the same pass sweeps what a previous API left behind and adopts the
        containers of runs still going."""
        listed_at = time.time()
        alive = contract.warm_alive_key(self.settings.DEPLOYMENT)  # warm workers leave without it
        await self.runs.client.set(alive, listed_at, ex=15)
        users = await self.users.listed()  # before anything is worked out: see WorkerUsers.sweep
        workers = await asyncio.to_thread(self.workers.list)
        seen, counts = set(), {"adopted": 0, "removed": 0, "ended": 0}
        pool = self.pool
        unknown = [w for w in workers if w.warm and not pool.owns_idle(w) and not pool.job_of(w)]
        doing = await self.runs.containers_of_active() if unknown else {}  # after a restart
        for w in workers:
            if w.warm:
                if pool.owns_idle(w):
                    continue  # waiting for a job: the pool's (tend, below)
                # Its job from this API's memory, or from Redis (adopted after a restart); with
                # neither, an orphan: its run ended, or a previous API started it. Removed.
                run_id, index = pool.job_of(w) or doing.get(w.id) or ("", -1)
                w = dataclasses.replace(w, run_id=run_id, index=index)
            seen.add((w.run_id, w.index))
            try:
                counts[await self.reap_one(w)] += 1
            except Exception:
                # One container that cannot be handled (removed meanwhile, its engine call failed)
                # must not hold up every other run: the rest are reaped, it is retried next pass.
                logger.exception("reaping variation %s/%d failed", w.run_id, w.index)
        wanted = {self.users.warm_user(n) for n in {*pool.starting, *pool.idle, *pool.taken}}
        for run_id in await self.runs.active():
            for i in range(await self.runs.count(run_id)):
                v = await self.runs.variation(run_id, i)
                started = float(v.get("started_at") or "inf")
                if v.get("status") == "running" and (run_id, i) not in seen and started < listed_at:
                    await self.runs.finish(run_id, i, "failed", reason="the container disappeared")
                elif v.get("status") == "running":
                    wanted.add(user := self.users.variation_user(run_id, i))
                    if user not in users and "container" in v:  # Redis restarted: back again
                        await self.users.variation(run_id, i)
        await self.users.sweep(users, wanted)
        await self.pool.tend(workers, listed_at)
        return counts

    async def reap_one(self, w: Worker) -> str:
        if not w.run_id:  # a warm worker no run claims
            await asyncio.to_thread(self.workers.remove, w.id)
            return "removed"
        v = await self.runs.variation(w.run_id, w.index)
        if await self.runs.status(w.run_id) != "running" or v.get("status") in ENDED:
            await asyncio.to_thread(self.workers.remove, w.id)
            return "removed"
        if not w.running:
            await self.relay.drain(w.run_id, w.index)  # its last events, before variation_done
            await self.record_exit(w, await self.runs.variation(w.run_id, w.index))
            return "ended"
        if time.time() > float(v.get("deadline") or "inf"):
            await asyncio.to_thread(self.workers.remove, w.id)
            limit = self.settings.VARIATION_TIMEOUT_SECONDS
            reason = f"no answer within {limit:g} s: the container was killed"
            await self.runs.finish(w.run_id, w.index, "timed_out", reason=reason)
            return "ended"
        return "adopted"

    async def record_exit(self, w: Worker, v: dict) -> None:
        exit_code, oom_killed = await asyncio.to_thread(self.workers.outcome, w.id)
        if exit_code == 0 and "result" in v:
            status, reason = "succeeded", None
        elif oom_killed:
            status, reason = (
                "failed",
                f"out of memory: killed at the {self.settings.WORKER_MEMORY} limit",
            )
        elif exit_code == 0:
            status, reason = "failed", "exited without an answer"
        else:
            status = "failed"
            reason = EXIT_REASONS.get(exit_code, f"exited with code {exit_code}")
        if status == "failed":  # the details stay in the server's log, never in the stream
            try:
                tail = await asyncio.to_thread(self.workers.logs, w.id)
            except Exception as exc:  # the logs help a reader; the outcome is recorded without them
                tail = f"(no logs: {exc!r})"
            logger.warning("variation %s/%d failed (%s):\n%s", w.run_id, w.index, reason, tail)
        details = {"exit_code": exit_code, "oom_killed": oom_killed, "reason": reason}
        await self.runs.finish(w.run_id, w.index, status, **details)
        await asyncio.to_thread(self.workers.remove, w.id)

    async def cancel(self, run_id: str) -> None:
        status = await self.runs.status(run_id)
        if status is None:
            raise ApiError(404, "run_not_found", f"no run {run_id}")
        if status != "running":
            raise ApiError(409, "run_ended", f"run {run_id} has already ended ({status})")
        await self.runs.mark_cancelled(run_id)
        await self.runs.add_event(run_id, "cancelled", {"variation": None})
        if run_id in self.starting:  # let the containers being created appear, then remove them too
            await asyncio.wait_for(asyncio.shield(self.starting[run_id]), 120)
        for i in range(await self.runs.count(run_id)):
            await self.runs.finish(run_id, i, "cancelled", reason="cancelled by the user")
        listed = await asyncio.to_thread(self.workers.list)
        mine = [w for w in listed if run_id in (w.run_id, (self.pool.job_of(w) or ("",))[0])]
        await asyncio.gather(*(asyncio.to_thread(self.workers.remove, w.id) for w in mine))


# === The event stream: XREAD from the client's last id, every entry one SSE event with that id ===

STREAM_ID = r"^\d{1,20}-\d{1,20}$"
# What uuid.uuid4().hex makes, and nothing else: no `:` can ever reach a Redis key name.
RUN_ID = r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$"
RunId = Annotated[str, PathParam(pattern=RUN_ID, description="a run id: 32 hex digits (uuid4)")]


class StreamSlots:
    """Open event streams in this process, in total and per client address."""

    def __init__(self, settings: Settings):
        self.settings, self.open = settings, Counter()

    @asynccontextmanager
    async def hold(self, client: str):
        s = self.settings
        if self.open.total() >= s.MAX_STREAMS:
            message = f"{s.MAX_STREAMS} event streams are open; try again shortly"
            raise ApiError(503, "too_many_streams", message, headers={"Retry-After": "5"})
        if self.open[client] >= s.MAX_STREAMS_PER_CLIENT:
            message = f"you have {s.MAX_STREAMS_PER_CLIENT} event streams open; close one first"
            raise ApiError(429, "too_many_streams", message, headers={"Retry-After": "5"})
        self.open[client] += 1
        try:
            yield
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]


async def follow(runs: Runs, run_id: str, last_id: str, request: Request):
    """Replay from last_id ("0-0" for a new client), then wait for new entries until `run_done`."""
    yield ServerSentEvent(comment="resuming after " + last_id, retry=1000)
    # The workers keep within the cap (their token budget), so this is a safety net: if entries were
    # trimmed anyway and this client had not seen them all, it is told, never silently skipped.
    trimmed, first = await runs.trimmed(run_id)
    if trimmed and _id_tuple(last_id) < _id_tuple(first):
        cap = runs.settings.STREAM_MAXLEN
        message = f"{trimmed} events before {first} were trimmed by the {cap}-entry cap"
        yield ServerSentEvent(
            event="events_lost", data=json.dumps({"variation": None, "message": message})
        )
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
            yield ServerSentEvent(id=entry_id, event=fields["event"], data=fields["data"])
            if fields["event"] == "run_done":
                return


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


# === The HTTP API ===

# A run belongs to whoever created it: POST /v1/runs returns an owner token, and every other route
# of the run asks for it, as `Authorization: Bearer` or as the cookie that POST sets for the page
# (EventSource cannot send a header; the browser sends the cookie itself).
TOKEN_COOKIE = "run_token"
bearer = HTTPBearer(auto_error=False, description="the `owner_token` of the run")
cookie = APIKeyCookie(name=TOKEN_COOKIE, auto_error=False, description="set by POST /v1/runs")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: Settings = app.state.settings
    # Four pools sized on purpose. A blocking pool waits (up to 10 s) for a free connection where
    # the default pool fails at once; the streams' pool has one connection per allowed stream; the
    # reaper and the relay have two each.
    clients = [
        redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL, max_connections=size, timeout=10, decode_responses=True
            )
        )
        for size in (settings.REDIS_CONNECTIONS, settings.MAX_STREAMS, 2, 2)
    ]
    await clients[0].ping()
    workers = app.state.workers or DockerWorkers(settings)
    await asyncio.to_thread(workers.check)
    users = WorkerUsers(clients[2], settings.REDIS_URL, settings.WORKER_REDIS_URL)
    pool = WarmPool(settings, workers, users)  # one pool, shared by the routes and the reaper
    app.state.orchestrator = Orchestrator(settings, Runs(clients[0], settings), workers, pool)
    app.state.stream_runs = Runs(clients[1], settings)
    app.state.stream_slots = StreamSlots(settings)
    # The reaper: the same orchestration with Redis connections of its own.
    reaping = Orchestrator(settings, Runs(clients[2], settings), workers, pool)
    swept = await reaping.reap()  # before serving: leftovers removed, live runs adopted
    logger.info("start-up sweep: %s", swept)
    reaper = asyncio.create_task(reaping.reap_forever())
    relay = Relay(clients[3], settings.STREAM_MAXLEN)  # copies workers' events into their runs'
    relaying = asyncio.create_task(relay_forever(relay, Runs(clients[3], settings).running))
    address = settings.REDIS_URL.rpartition("@")[2]  # never the password in a log
    logger.info("variations API ready: image %s, Redis %s", settings.WORKER_IMAGE, address)
    yield
    reaper.cancel()
    relaying.cancel()
    await pool.close()
    for client in clients:
        await client.aclose()


def create_app(settings: Settings | None = None, workers=None) -> FastAPI:
    """`workers` replaces the Docker backend (the tests run workers as local processes)."""
    settings = settings or Settings()

    async def trusted_host(request: Request) -> None:
        # DNS rebinding: a page from another site whose name now points at 127.0.0.1 can reach
        # this API, but its requests still carry that name in Host.
        if request.url.hostname not in settings.ALLOWED_HOSTS:
            raise ApiError(400, "untrusted_host", "this API is not served under that host name")

    app = FastAPI(title="Agent variations", lifespan=lifespan, dependencies=[Depends(trusted_host)])
    app.state.settings, app.state.workers = settings, workers
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        validator=None,
        transformer=safe_request_id,
    )
    codes = (400, 401, 403, 404, 409, 422, 429, 500, 503)
    errors = {code: {"model": ErrorResponse} for code in codes}
    stream = {
        200: {"content": {"text/event-stream": {}}, "description": "the run's events"},
        204: {"description": "the run has ended and no event follows the given id"},
    }

    def orchestrator(request: Request) -> Orchestrator:
        return request.app.state.orchestrator

    async def stream_slot(request: Request):
        """Held for as long as the event stream is open (FastAPI ends it after the response)."""
        async with request.app.state.stream_slots.hold(request.client.host):
            yield

    async def owned(
        run_id: RunId,
        request: Request,
        header: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        from_cookie: Annotated[str | None, Depends(cookie)],
    ) -> str:
        """The run's id, once the caller has shown the run's owner token."""
        owner = await orchestrator(request).runs.owner(run_id)
        if owner is None:
            raise ApiError(404, "run_not_found", f"no run {run_id} (it may have expired)")
        token = header.credentials if header else from_cookie
        if token is None:
            message = "send the run's owner_token as `Authorization: Bearer <token>`"
            raise ApiError(401, "owner_token_missing", message, {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(owner, token_hash(token)):
            raise ApiError(403, "not_run_owner", "this is not the owner token of that run")
        return run_id

    OwnedRun = Annotated[str, Depends(owned)]

    async def existing(request: Request, run_id: str) -> dict:
        view = await orchestrator(request).runs.view(run_id)
        if view is None:
            raise ApiError(404, "run_not_found", f"no run {run_id} (it may have expired)")
        return view

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(exc.error_type, exc.message)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    install_shape_handlers(app)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        logger.warning("Redis failed: %r", exc)
        return JSONResponse(error_body("redis_unavailable", "Redis is not answering"), 503)

    @app.exception_handler(docker.errors.DockerException)
    async def docker_down(request: Request, exc: docker.errors.DockerException) -> JSONResponse:
        logger.warning("Docker failed: %r", exc)
        return JSONResponse(error_body("docker_unavailable", "Docker is not answering"), 503)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(request: Request) -> dict:
        """200 once Redis answers: /health says the process is up, this that it can serve runs."""
        await orchestrator(request).runs.client.ping()  # a RedisError answers 503 (redis_down)
        return {"status": "ready"}

    @app.post("/v1/runs", status_code=202, responses=errors)
    async def create_run(body: RunRequest, request: Request, response: Response) -> RunCreated:
        """Start one container per variation; follow them at /v1/runs/{run_id}/events."""
        for i, v in enumerate(body.overrides):  # a model someone pays for: only the listed ones
            if v.model is not None and v.model not in settings.ALLOWED_MODELS:
                allowed = ", ".join(settings.ALLOWED_MODELS)
                loc, msg = ("body", "overrides", i, "model"), f"allowed models: {allowed}"
                raise RequestValidationError(
                    [{"loc": loc, "msg": msg, "type": "model_not_allowed"}]
                )
        token = secrets.token_urlsafe(32)
        created = await orchestrator(request).create(body, request.client.host, token_hash(token))
        run_id = created["run_id"]
        # For the page: only sent to this run's paths, never with a request from another site.
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            max_age=int(settings.VARIATION_TIMEOUT_SECONDS) + settings.RUN_TTL_SECONDS,
            path=f"/v1/runs/{run_id}",
            httponly=True,
            samesite="strict",
        )
        return RunCreated(
            **created,
            owner_token=token,
            events=f"/v1/runs/{run_id}/events",
            status=f"/v1/runs/{run_id}",
        )

    @app.get("/v1/runs/{run_id}", responses=errors)
    async def get_run(run_id: OwnedRun, request: Request) -> RunView:
        """Each variation's status, exit code and final answer; the user's pick."""
        return await existing(request, run_id)

    # [start:run_events]
    @app.get("/v1/runs/{run_id}/events", responses={**stream, **errors}, response_model=None)
    async def run_events(
        run_id: OwnedRun,
        request: Request,
        _: Annotated[None, Depends(stream_slot)],
        after: Annotated[str | None, Query(pattern=STREAM_ID)] = None,
        last_event_id: Annotated[str | None, Header(pattern=STREAM_ID)] = None,
    ):
        """SSE, every variation in one stream. Each event's `id` is its Redis Stream id: reconnect
        with `Last-Event-ID` (or `?after=`) to resume right after it; no id replays the run."""
        view = await existing(request, run_id)
        start = last_event_id or after or "0-0"
        runs = request.app.state.stream_runs
        newest_id = await runs.newest_event_id(run_id)
        # An id this run never sent (ids up to 20 digits pass the pattern; Redis refuses those
        # past 2**64) would leave the client waiting for an entry that never comes: refuse it.
        if _id_tuple(start) > _id_tuple(newest_id):
            message = f"event id {start} is past the newest event of run {run_id} ({newest_id})"
            raise ApiError(400, "unknown_event_id", message)
        # An ended run with nothing after `start`: 204, the answer that stops EventSource retrying.
        if view["status"] != "running" and _id_tuple(start) == _id_tuple(newest_id):
            return Response(status_code=204)
        return EventSourceResponse(
            or_failure(follow(runs, run_id, start, request), run_id),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        # [end:run_events]

    @app.delete("/v1/runs/{run_id}", responses=errors)
    async def cancel_run(run_id: OwnedRun, request: Request) -> RunView:
        """Stop and remove the run's containers; the stream says `cancelled`, then `run_done`."""
        await orchestrator(request).cancel(run_id)
        return await existing(request, run_id)

    @app.post("/v1/runs/{run_id}/select", responses=errors)
    async def select(run_id: OwnedRun, body: Selection, request: Request) -> RunView:
        """Store the user's pick: one variation that succeeded."""
        view = await existing(request, run_id)
        if body.variation >= len(view["variations"]):
            raise ApiError(
                422, "no_such_variation", f"run {run_id} has {len(view['variations'])} variations"
            )
        if view["variations"][body.variation]["status"] != "succeeded":
            raise ApiError(
                409, "variation_not_succeeded", "only a variation that answered can be picked"
            )
        await orchestrator(request).runs.select(run_id, body.variation)
        return await existing(request, run_id)

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
