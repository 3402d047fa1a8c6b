"""The Redis layout of lesson 05, and the script that ends a variation exactly once (docs/05,
"Ending a variation exactly once"). Nothing is cached in memory: the API can restart mid-run."""

import json
import time
from typing import Literal

import redis.asyncio as redis
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel, Field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from research_agent import AnswerStyle, events_key, variation_key, warm_queue_key
from research_agent import job as contract

# What the routes answer: a run as Runs.view() reads it.


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


# Every run is three keys, and one script ends a variation exactly once:
#   run:{id}          hash: query, status (running, done, cancelled), variations, running, selected,
#                     client, owner
#   run:{id}:v:{i}    hash per variation: settings, status, container, deadline, result, error
#   run:{id}:events   stream of {event, data}; data is JSON and always names its variation
#   (the worker writes these two as well: variation_key and events_key come from
#   research_agent/worker/job.py)
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
    """The runs in Redis. Every method is at most three round trips, however many runs or
    variations there are (a pipeline sends the per-variation commands at once); nothing is
    cached."""

    def __init__(self, client: redis.Redis, settings):
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

    async def counts(self, run_ids) -> dict[str, int]:
        """How many variations each run has, in one round trip."""
        run_ids = list(run_ids)
        async with self.client.pipeline(transaction=False) as p:
            for run_id in run_ids:
                p.hget(run_key(run_id), "variations")
            found = await p.execute()
        return {r: int(n or 0) for r, n in zip(run_ids, found, strict=True)}

    async def running(self) -> list[tuple[str, int]]:
        """(run id, variation) of every variation of the runs going (the relay checks which run)."""
        counts = await self.counts(await self.active())
        return [(r, i) for r, n in counts.items() for i in range(n)]

    async def variations_of_active(self) -> dict[tuple[str, int], dict]:
        """(run id, variation) -> its hash, for every variation of the runs going."""
        pairs = await self.running()
        async with self.client.pipeline(transaction=False) as p:
            for run_id, i in pairs:
                p.hgetall(variation_key(run_id, i))
            found = await p.execute()
        return dict(zip(pairs, found, strict=True))

    async def clients(self, run_ids) -> list[str | None]:
        """The client address of each run given, in one round trip."""
        async with self.client.pipeline(transaction=False) as p:
            for run_id in run_ids:
                p.hget(run_key(run_id), "client")
            return await p.execute()

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
        found = await self.variations_of_active()
        return {v["container"]: key for key, v in found.items() if v.get("container")}

    async def read_events(self, run_id: str, after: str, block_ms: int | None) -> list:
        """Up to 200 (id, fields) entries after the given id, waiting up to block_ms for one."""
        found = await self.client.xread({events_key(run_id): after}, count=200, block=block_ms)
        return found[0][1] if found else []

    async def newest_event_id(self, run_id: str) -> str:
        newest = await self.client.xrevrange(events_key(run_id), count=1)
        return newest[0][0] if newest else "0-0"

    async def lost_events(self, run_id: str, last_id: str) -> ServerSentEvent | None:
        """An `events_lost` event if the stream's cap has trimmed events a client resuming after
        last_id has not seen (a safety net: the workers keep within the cap, their token budget),
        so that it is told, never silently skipped; else None."""
        trimmed, first = await self.trimmed(run_id)
        if trimmed and id_tuple(last_id) < id_tuple(first):
            cap = self.settings.STREAM_MAXLEN
            message = f"{trimmed} events before {first} were trimmed by the {cap}-entry cap"
            data = {"variation": None, "message": message}
            return ServerSentEvent(event="events_lost", data=data)
        return None

    async def trimmed(self, run_id: str) -> tuple[int, str]:
        """How many events the stream's cap has trimmed, and the id of the oldest one kept."""
        info = await self.client.xinfo_stream(events_key(run_id))
        first = info["first-entry"][0] if info["first-entry"] else "0-0"
        return info["entries-added"] - info["length"], first

    async def view(self, run_id: str) -> dict | None:
        run = await self.client.hgetall(run_key(run_id))
        if not run:
            return None
        async with self.client.pipeline(transaction=False) as p:
            for i in range(int(run["variations"])):
                p.hgetall(variation_key(run_id, i))
            found = await p.execute()
        variations = []
        for v in found:
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


def id_tuple(stream_id: str) -> tuple[int, int]:
    """A stream id as numbers, to compare ids the way Redis orders them."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def redis_clients(settings) -> list[redis.Redis]:
    """Four pools sized on purpose: the routes', the event streams', the reaper's, the relay's. A
    blocking pool waits (up to 10 s) for a free connection where the default pool fails at once;
    each open event stream holds one connection (XREAD BLOCK), so the streams' pool has one per
    allowed stream and followers can never take the connections of the routes or the reaper.
    Bytes that are not UTF-8 (a worker may write any) are read as U+FFFD rather than raising.
    A connection a pool kept across a Redis restart fails the next command sent on it: that
    command is sent once more, at once, on a new connection (redis-py's default from a URL is not
    to retry), so the first request after a restart is not a 503; a Redis that is down still
    fails fast."""
    sizes = (settings.REDIS_CONNECTIONS, settings.MAX_STREAMS, 2, 2)
    return [
        redis.Redis(
            connection_pool=redis.BlockingConnectionPool.from_url(
                settings.REDIS_URL,
                max_connections=size,
                timeout=10,
                decode_responses=True,
                encoding_errors="replace",
                retry=Retry(NoBackoff(), 1),
            )
        )
        for size in sizes
    ]
