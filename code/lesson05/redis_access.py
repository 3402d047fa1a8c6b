"""Lesson 05's Redis, guarded: who may run which command on which key, and the relay that copies
each worker's events into its run's stream.

A worker runs a model on text from the web: treat whatever runs in its container as hostile. It
gets a Redis user of its own that may only XADD to its own stream (research_agent/worker/job.py's
worker_events_key): it cannot read another run, rewrite an owner, write as another variation or
watch the server (MONITOR). A warm worker, which has no job yet, may only wait on its own list; the
job it pops hands it its variation's user. The API, the only other client, may do everything but
the @dangerous commands (CONFIG, MONITOR, FLUSHALL, KEYS, DEBUG...), except creating and removing
the workers' users. `default` is switched off: every client needs a password.

A user cannot be limited in bytes (ACLs name commands and keys; a script runs with its caller's
rights, so it cannot be the only way in), so how much a worker can put in Redis is bounded in
layers: Redis drops a client whose command outgrows its share of memory (server_args), the relay
reads each entry's size before the entry and refuses one over EVENT_MAX_BYTES unread, counts what
each variation has sent against VARIATION_MAX_BYTES, deletes what it has copied, and cuts off a
worker that goes past either (its user removed, its stream emptied, its variation failed). Past
all that, Redis's maxmemory refuses writes rather than evict the runs going.

    python -m lesson05.redis_access server-args   redis-server's arguments (password: stdin)
"""

import asyncio
import hashlib
import hmac
import json
import logging
import sys
from typing import NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import docker
import redis.asyncio as redis
from fastapi.sse import ServerSentEvent
from prometheus_client import CollectorRegistry, Counter
from redis.backoff import ExponentialBackoff

from research_agent import WORKER_EVENTS, error_body, events_key, variation_key, worker_events_key

logger = logging.getLogger("variations")

API_USER = "api"
# The API keeps every command but the dangerous ones, plus the three ACL subcommands it needs.
API_RULES = ["~*", "&*", "+@all", "-@dangerous", "+acl|setuser", "+acl|deluser", "+acl|users"]
WORKER_PREFIXES = ("variation:", "warm:")  # the users this API creates, and may remove


# Redis's memory (scripts/lesson-05.sh gives its container a limit twice this). `noeviction`: once
# full, a write is refused with an error its writer sees; nothing stored is dropped. Every run key
# has a TTL from the moment the run is created, so a volatile-* policy would evict the runs going,
# as allkeys-* would, silently. Reads, deletes and expiry go on, so it frees itself as runs end.
REDIS_MAXMEMORY = "256mb"
# What all clients together may hold in buffers, a command being read included: past it Redis
# drops the biggest client. So no single command (a 50 MB XADD) gets stored, or even read whole.
REDIS_CLIENTS_MEMORY = "32mb"


def server_args(api_password: str) -> list[str]:
    """redis-server's arguments: `default` off, the API's user with the password's SHA-256 (so
    the command line, which `ps` shows, never holds the password itself), and the memory limits
    above. No client can log in as `default`, but Redis 7.0 replays its AOF as `default`: with
    -@all every MULTI in it would be refused at start-up (the runs' keys lost), hence +@all on a
    user nobody can be."""
    digest = hashlib.sha256(api_password.encode()).hexdigest()
    default = ["--user", "default", "off", "resetpass", "~*", "&*", "+@all"]
    api = ["--user", API_USER, "on", f"#{digest}", *API_RULES]
    memory = ["--maxmemory", REDIS_MAXMEMORY, "--maxmemory-policy", "noeviction"]
    return [*default, *api, *memory, "--maxmemory-clients", REDIS_CLIENTS_MEMORY]


class SharedUser:
    """The lesson's default `users`: every worker gets the same WORKER_REDIS_URL, and there are
    no users to tend."""

    def __init__(self, url: str):
        self.url = url

    async def variation(self, run_id: str, index: int) -> str:
        return self.url

    async def listed(self) -> list[str]:
        return []

    async def tend(self, listed: list[str], variations: dict, wanted: set[str]) -> None:
        pass


class WorkerUsers:
    """One Redis user per worker: the lesson's Orchestrator holds one as its `users`, asks it for
    each variation's REDIS_URL (variation) and, each reaper pass, for the users it had (listed)
    and to tend them (tend). Passwords are derived (HMAC of the user name with a secret only
    the API holds), so the API can create a user again after a Redis restart without storing it."""

    def __init__(self, client: redis.Redis, url: str, worker_url: str):
        self.client, self.worker_url = client, worker_url
        self.secret = (urlsplit(url).password or url).encode()

    def _url(self, user: str) -> str:
        parts = urlsplit(self.worker_url)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{quote(user, safe='')}:{self._password(user)}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _password(self, user: str) -> str:
        return hmac.new(self.secret, user.encode(), hashlib.sha256).hexdigest()

    @staticmethod
    def variation_user(run_id: str, index: int) -> str:
        return f"variation:{run_id}:{index}"

    @staticmethod
    def warm_user(name: str) -> str:
        return f"warm:{name}"

    async def _set(self, user: str, rules: list[str]) -> str:
        # reset: no password, key, channel or command left from before; then only what is listed.
        reset = ["reset", "resetchannels", "on", f">{self._password(user)}"]
        await self.client.execute_command("ACL", "SETUSER", user, *reset, *rules)
        return self._url(user)

    async def variation(self, run_id: str, index: int) -> str:
        """A variation's user, allowed to XADD to its own stream: the REDIS_URL of its job."""
        stream = worker_events_key(run_id, index)
        return await self._set(self.variation_user(run_id, index), [f"~{stream}", "+xadd", "+ping"])

    async def warm(self, name: str, queue: str, ready: str, alive: str) -> str:
        """A warm worker's user: its own list, its ready flag, and whether the API is alive."""
        rules = [f"~{queue}", f"~{ready}", f"%R~{alive}", "+blpop", "+set", "+del", "+exists"]
        return await self._set(self.warm_user(name), rules)

    async def remove(self, user: str) -> None:
        """ACL DELUSER also closes the user's connections: a removed worker is cut off at once."""
        await self.client.execute_command("ACL", "DELUSER", user)

    async def sweep(self, listed: list[str], wanted: set[str]) -> int:
        """Remove this API's users that no worker needs any more. `listed` must have been read
        (ACL USERS) before `wanted` was worked out, so a user created in between is kept."""
        gone = [u for u in listed if u.startswith(WORKER_PREFIXES) and u not in wanted]
        for user in gone:
            await self.remove(user)
        return len(gone)

    async def listed(self) -> list[str]:
        return await self.client.execute_command("ACL", "USERS")

    async def tend(self, listed: list[str], variations: dict, wanted: set[str]) -> None:
        """Each reaper pass, with the users `listed` before it began and the variations of the
        runs going: remove the users no worker needs (`wanted`: the warm workers'), and after a
        Redis restart without its ACLs, create those of the running variations again."""
        wanted = set(wanted)
        for (run_id, i), v in variations.items():
            if v.get("status") == "running":
                wanted.add(user := self.variation_user(run_id, i))
                if user not in listed and "container" in v:  # Redis restarted: back again
                    await self.variation(run_id, i)
        await self.sweep(listed, wanted)


# The relay: each worker writes its own stream; entries are copied into the run's stream with the
# variation set by the relay, not by the worker. It reads through this script, never with XREAD:
# Redis measures each entry first and sends the fields of those within ARGV[3] bytes, but of a
# bigger one only its id and size, so an oversized entry never reaches the API. At most ARGV[2]
# entries or about ARGV[4] bytes a call; first, the stream's memory (what is waiting in it).
READ_EVENTS = """
local found, total, cursor = {}, 0, ARGV[1]
for _ = 1, tonumber(ARGV[2]) do
  local entry = redis.call('XRANGE', KEYS[1], '(' .. cursor, '+', 'COUNT', 1)[1]
  if not entry then break end
  local size = 0
  for _, value in ipairs(entry[2]) do size = size + #value end
  cursor = entry[1]
  if size > tonumber(ARGV[3]) then
    found[#found + 1] = {cursor, size}
    break
  end
  found[#found + 1] = {cursor, size, entry[2]}
  total = total + size
  if total >= tonumber(ARGV[4]) then break end
end
return {redis.call('MEMORY', 'USAGE', KEYS[1], 'SAMPLES', '0') or 0, found}
"""
# The copy checks that its cursor is still where the caller read it (another relay, a drain, a
# second API may have copied the same entries) and that the variation is running, then copies,
# keeps the answer or error, moves the cursor, adds up the bytes and deletes what it read from the
# worker's stream: the stream holds only what is still to be copied.
COPY_EVENTS = """
local cursor = redis.call('HGET', KEYS[1], 'relayed') or '0-0'
if cursor ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local ids = tonumber(ARGV[5])
for i = 6 + ids, #ARGV, 4 do
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'event', ARGV[i], 'data', ARGV[i + 1])
  if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[1], ARGV[i + 2], ARGV[i + 3]) end
end
redis.call('HSET', KEYS[1], 'relayed', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'relayed_bytes', ARGV[4])
redis.call('XDEL', KEYS[3], unpack(ARGV, 6, 5 + ids))
return 1
"""
# Bytes of entries one read sends the API at most, per worker (plus one entry).
READ_BYTES = 256 * 1024
# Worker events the relay refused, and why: /metrics (lesson05/routes.py) shows them.
METRICS = CollectorRegistry()
REFUSED = Counter(
    "variations_events_refused",
    "Worker events the relay refused; each cut its worker off",
    ["reason"],
    registry=METRICS,
)


def checked(index: int, fields: dict) -> tuple[str, str, str, str] | None:
    """(event, data, field to keep, value) for one worker entry, or None to drop it: only the
    worker events, JSON objects, and the variation always this one."""
    event = fields.get("event")
    try:
        data = json.loads(fields.get("data", ""))
    except ValueError:
        data = None
    if event not in WORKER_EVENTS or not isinstance(data, dict):
        return None
    data["variation"] = index
    field, value = "", ""
    if event == "final":
        field, value = "result", json.dumps(data)
    elif event == "error" and isinstance(data.get("error"), dict):
        field, value = "error", json.dumps(data["error"])
    return event, json.dumps(data), field, value


class Target(NamedTuple):
    """A running variation the relay copies from: where its cursor is, how much it has sent."""

    run_id: str
    index: int
    cursor: str
    sent: int  # bytes of entries copied so far


class Relay:
    def __init__(self, runs):
        """`runs`: a variations.store.Runs, whose client it reads with and whose settings hold
        the limits (STREAM_MAXLEN, EVENT_MAX_BYTES, VARIATION_MAX_BYTES)."""
        self.runs, self.client, self.settings = runs, runs.client, runs.settings
        self._read = self.client.register_script(READ_EVENTS)
        self._copy = self.client.register_script(COPY_EVENTS)

    async def targets(self, runs: list[tuple[str, int]]) -> dict[str, Target]:
        """worker stream -> its Target, for the running variations given."""
        async with self.client.pipeline(transaction=False) as p:
            for run_id, i in runs:
                p.hmget(variation_key(run_id, i), "status", "relayed", "relayed_bytes")
            found = await p.execute()
        return {
            worker_events_key(run_id, i): Target(run_id, i, relayed or "0-0", int(sent or 0))
            for (run_id, i), (status, relayed, sent) in zip(runs, found, strict=True)
            if status == "running"
        }

    async def pump(self, targets: dict[str, Target]) -> int:
        """Copy what the given workers' streams hold past each cursor; how many entries it read
        (some may have been copied meanwhile by another relay: the script then copies nothing)."""
        if not targets:
            return 0
        async with self.client.pipeline(transaction=False) as p:
            for stream, target in targets.items():
                args = [target.cursor, 200, self.settings.EVENT_MAX_BYTES, READ_BYTES]
                await self._read(keys=[stream], args=args, client=p)
            found = await p.execute()
        read = 0
        for (stream, target), (waiting, entries) in zip(targets.items(), found, strict=True):
            read += len(entries)
            await self.copy(stream, target, waiting, entries)
        return read

    async def copy(self, stream: str, target: Target, waiting: int, entries: list) -> None:
        """Copy one worker's entries as READ_EVENTS sent them, or cut the worker off."""
        (run_id, index, cursor, sent), s = target, self.settings
        if entries and len(entries[-1]) == 2:  # its size only: Redis kept the entry
            why = f"an event of {entries[-1][1]:,} bytes, over the {s.EVENT_MAX_BYTES:,}-byte limit"
            return await self.cut_off(run_id, index, why, "too_large")
        if sent + waiting > s.VARIATION_MAX_BYTES:  # copied, and waiting to be
            why = f"more than {s.VARIATION_MAX_BYTES:,} bytes of events"
            return await self.cut_off(run_id, index, why, "over_budget")
        args, ids, size = [], [], 0
        for entry in entries:
            ids.append(entry[0])
            size += entry[1]
            fields = dict(zip(entry[2][::2], entry[2][1::2], strict=False))
            if (checked_entry := checked(index, fields)) is None:
                logger.warning("variation %s/%d sent a non-event: dropped", run_id, index)
                continue
            args += checked_entry
        if ids:
            keys = [variation_key(run_id, index), events_key(run_id), stream]
            args = [cursor, ids[-1], s.STREAM_MAXLEN, size, len(ids), *ids, *args]
            await self._copy(keys=keys, args=args)

    async def cut_off(self, run_id: str, index: int, why: str, reason: str) -> None:
        """A worker that sent too much: its user removed first (ACL DELUSER also closes its
        connections), then what it left in its stream (deletes go on when Redis is full), then
        its variation ends `failed`, saying why: the page shows it, /metrics counts it."""
        logger.warning("variation %s/%d cut off: its worker sent %s", run_id, index, why)
        REFUSED.labels(reason).inc()
        user = WorkerUsers.variation_user(run_id, index)
        await self.client.execute_command("ACL", "DELUSER", user)
        await self.client.xtrim(worker_events_key(run_id, index), maxlen=0)
        await self.runs.finish(run_id, index, "failed", reason=f"its worker sent {why}: cut off")

    async def drain(self, run_id: str, index: int) -> None:
        """Everything the worker wrote, copied now: called before its exit is recorded, so its
        `final` is in the run's stream before its `variation_done`."""
        for _ in range(50):  # 200 entries a round: a worker's budget fits many times over
            targets = await self.targets([(run_id, index)])
            if not await self.pump(targets):
                return


class Backoff:
    """One log line per failure, and a wait that doubles up to `cap` while the failures last
    (redis-py's ExponentialBackoff counts it): a Redis restart costs a few lines, not a traceback
    per pass."""

    def __init__(self, what: str, base: float, cap: float = 2.0):
        self.what, self.base, self.failures = what, base, 0
        self.waits = ExponentialBackoff(cap=cap, base=base)

    def ok(self) -> float:
        self.failures = 0
        return self.base

    def failed(self, exc: Exception) -> float:
        wait = self.waits.compute(self.failures)
        self.failures += 1
        logger.warning("%s failed (retrying in %.1f s): %r", self.what, wait, exc)
        return wait


async def relay_forever(relay: Relay, running, stopping: asyncio.Event) -> None:
    """Copy workers' events as they come: `running()` gives the (run id, variation) pairs going.
    Ends once `stopping` is set, even if the cancellation that came with it was lost (below)."""
    backoff = Backoff("the relay", 0.1)
    while not stopping.is_set():
        try:
            targets = await relay.targets(await running())
            if not await relay.pump(targets):  # nothing new: look again shortly
                await asyncio.sleep(0.05 if targets else 0.1)
            backoff.ok()
        except (redis.RedisError, OSError) as exc:
            await asyncio.sleep(backoff.failed(exc))
        except Exception:  # whatever a worker wrote, the relay goes on for the others
            logger.exception("the relay failed; retrying")
            await asyncio.sleep(backoff.failed(RuntimeError("see the traceback above")))


async def forever(what: str, interval: float, step, stopping: asyncio.Event) -> None:
    """Await step() every `interval` seconds, whatever fails: Redis or the engine away costs a
    line each time, less and less often (Backoff); anything else its traceback.

    Ends once `stopping` is set. Cancelling alone is not enough on Python 3.11: a cancellation
    can be lost inside a library's timeout (asyncio.wait_for's known race; redis-py uses it),
    and a loop that retries everything then goes on for ever and holds the shutdown open (seen
    under load: 60 s and more)."""
    backoff = Backoff(what, interval)
    while not stopping.is_set():
        try:
            await step()
            wait = backoff.ok()
        except (redis.RedisError, docker.errors.DockerException, OSError) as exc:
            wait = backoff.failed(exc)
        except Exception:
            logger.exception("%s failed; retrying", what)
            wait = backoff.failed(RuntimeError("see the traceback above"))
        await asyncio.sleep(wait)


async def or_failure(stream, run_id: str):
    """An event stream; if Redis fails meanwhile, the end every stream of the course has: an
    `error` event (retryable: the client may resume later with the last id it saw), then
    `data: [DONE]`. Once the 200 is sent, a failure can no longer be a status: it is an event."""
    try:
        async for event in stream:
            yield event
    except redis.RedisError as exc:
        logger.warning("event stream of run %s cut: Redis failed: %r", run_id, exc)
        message = "Redis is not answering; resume from your last event id shortly"
        error = error_body("redis_unavailable", message, retryable=True)["error"]
        yield ServerSentEvent(event="error", data={"variation": None, "error": error})
        yield ServerSentEvent(raw_data="[DONE]")  # raw: the text itself, not a JSON string


if __name__ == "__main__":
    if sys.argv[1:] != ["server-args"]:
        sys.exit(__doc__)
    print("\n".join(server_args(sys.stdin.readline().strip())))
