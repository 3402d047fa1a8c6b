"""Lesson 05's Redis, guarded: who may run which command on which key, and the relay that copies
each worker's events into its run's stream.

A worker runs a model on text from the web: treat whatever runs in its container as hostile. It
gets a Redis user of its own that may only XADD to its own stream (app/job.py's
worker_events_key): it cannot read another run, rewrite an owner, write as another variation or
watch the server (MONITOR). A warm worker, which has no job yet, may only wait on its own list; the
job it pops hands it its variation's user. The API, the only other client, may do everything but
the @dangerous commands (CONFIG, MONITOR, FLUSHALL, KEYS, DEBUG...), except creating and removing
the workers' users. `default` is switched off: every client needs a password.

    python code/variations/redis_access.py server-args   redis-server's arguments (password: stdin)
"""

import asyncio
import hashlib
import hmac
import json
import logging
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import docker
import redis.asyncio as redis
from sse_starlette import ServerSentEvent

AGENT_DIR = str(Path(__file__).resolve().parents[2] / "research-agent")
if AGENT_DIR not in sys.path:  # run as a script by scripts/lesson-05.sh: add it once
    sys.path.insert(0, AGENT_DIR)
from app.error_shape import error_body  # noqa: E402
from app.job import WORKER_EVENTS, events_key, variation_key, worker_events_key  # noqa: E402

logger = logging.getLogger("variations")

API_USER = "api"
# The API keeps every command but the dangerous ones, plus the three ACL subcommands it needs.
API_RULES = ["~*", "&*", "+@all", "-@dangerous", "+acl|setuser", "+acl|deluser", "+acl|users"]
WORKER_PREFIXES = ("variation:", "warm:")  # the users this API creates, and may remove


def server_args(api_password: str) -> list[str]:
    """redis-server's arguments: `default` off, the API's user with the password's SHA-256 (so
    the command line, which `ps` shows, never holds the password itself). No client can log in as
    `default`, but Redis 7.0 replays its AOF as `default`: with -@all every MULTI in it would be
    refused at start-up (the runs' keys lost), hence +@all on a user nobody can be."""
    digest = hashlib.sha256(api_password.encode()).hexdigest()
    return ["--user", "default", "off", "resetpass", "~*", "&*", "+@all",
            "--user", API_USER, "on", f"#{digest}", *API_RULES]  # fmt: skip


class WorkerUsers:
    """One Redis user per worker. Passwords are derived (HMAC of the user name with a secret only
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
        await self.client.execute_command(
            "ACL", "SETUSER", user, "reset", "resetchannels", "on", f">{self._password(user)}",
            *rules,
        )  # fmt: skip
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


# The relay: each worker writes its own stream; entries are copied into the run's stream with the
# variation set by the relay, not by the worker. The script checks that its cursor is still where
# the caller read it (another relay, a drain, a second API may have copied the same entries) and
# that the variation is running, then copies, keeps the answer or error, and moves the cursor.
COPY_EVENTS = """
local cursor = redis.call('HGET', KEYS[1], 'relayed') or '0-0'
if cursor ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
for i = 4, #ARGV, 4 do
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], '*', 'event', ARGV[i], 'data', ARGV[i + 1])
  if ARGV[i + 2] ~= '' then redis.call('HSET', KEYS[1], ARGV[i + 2], ARGV[i + 3]) end
end
redis.call('HSET', KEYS[1], 'relayed', ARGV[2])
return 1
"""


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


class Relay:
    def __init__(self, client: redis.Redis, maxlen: int):
        self.client, self.maxlen = client, maxlen
        self._copy = client.register_script(COPY_EVENTS)

    async def targets(self, runs: list[tuple[str, int]]) -> dict[str, tuple[str, int, str]]:
        """worker stream -> (run id, variation, cursor), for the running variations given."""
        async with self.client.pipeline(transaction=False) as p:
            for run_id, i in runs:
                p.hmget(variation_key(run_id, i), "status", "relayed")
            found = await p.execute()
        return {
            worker_events_key(run_id, i): (run_id, i, relayed or "0-0")
            for (run_id, i), (status, relayed) in zip(runs, found, strict=True)
            if status == "running"
        }

    async def pump(self, targets: dict[str, tuple[str, int, str]], block_ms: int | None) -> int:
        """Copy what the given workers' streams hold past each cursor; how many entries it read
        (some may have been copied meanwhile by another relay: the script then copies nothing)."""
        if not targets:
            return 0
        cursors = {stream: cursor for stream, (_, _, cursor) in targets.items()}
        found = await self.client.xread(cursors, count=200, block=block_ms)
        read = 0
        for stream, entries in found or []:
            run_id, index, cursor = targets[stream]
            args = [cursor, entries[-1][0], self.maxlen]
            for _, fields in entries:
                entry = checked(index, fields)
                if entry is None:
                    logger.warning("variation %s/%d sent a non-event: dropped", run_id, index)
                    continue
                args += entry
            keys = [variation_key(run_id, index), events_key(run_id)]
            await self._copy(keys=keys, args=args)
            read += len(entries)
        return read

    async def drain(self, run_id: str, index: int) -> None:
        """Everything the worker wrote, copied now: called before its exit is recorded, so its
        `final` is in the run's stream before its `variation_done`."""
        for _ in range(50):  # 200 entries a round: a worker's budget fits many times over
            targets = await self.targets([(run_id, index)])
            if not await self.pump(targets, block_ms=None):
                return


class Backoff:
    """One log line per failure, and a wait that doubles up to `cap` while the failures last:
    a Redis restart costs a few lines, not a traceback per pass."""

    def __init__(self, what: str, base: float, cap: float = 2.0):
        self.what, self.base, self.cap, self.delay = what, base, cap, base

    def ok(self) -> float:
        self.delay = self.base
        return self.base

    def failed(self, exc: Exception) -> float:
        wait, self.delay = self.delay, min(self.cap, self.delay * 2)
        logger.warning("%s failed (retrying in %.1f s): %r", self.what, wait, exc)
        return wait


async def relay_forever(relay: Relay, running, stopping: asyncio.Event) -> None:
    """Copy workers' events as they come: `running()` gives the (run id, variation) pairs going.
    Ends once `stopping` is set, even if the cancellation that came with it was lost (below)."""
    backoff = Backoff("the relay", 0.1)
    while not stopping.is_set():
        try:
            targets = await relay.targets(await running())
            if not await relay.pump(targets, block_ms=100) and not targets:
                await asyncio.sleep(0.1)
            backoff.ok()
        except (redis.RedisError, OSError) as exc:
            await asyncio.sleep(backoff.failed(exc))


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
    `data: [DONE]`."""
    try:
        async for event in stream:
            yield event
    except redis.RedisError as exc:
        logger.warning("event stream of run %s cut: Redis failed: %r", run_id, exc)
        message = "Redis is not answering; resume from your last event id shortly"
        error = error_body("redis_unavailable", message, retryable=True)["error"]
        yield ServerSentEvent(event="error", data=json.dumps({"variation": None, "error": error}))
        yield ServerSentEvent(data="[DONE]")


class WorkerRedisUsers:
    """Mixed into the Orchestrator: each variation's job carries a Redis user of its own, and
    every reaper pass removes the users no worker needs (and, after a Redis restart without its
    ACLs, creates those of the running variations again)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        s = self.settings
        self.users = WorkerUsers(self.runs.client, s.REDIS_URL, s.WORKER_REDIS_URL)

    async def redis_url(self, run_id: str, index: int) -> str:
        return await self.users.variation(run_id, index)

    async def before_pass(self) -> dict:
        ctx = await super().before_pass()
        ctx["users"] = await self.users.listed()  # before anything is worked out: see sweep
        return ctx

    def wanted_users(self) -> set[str]:
        return set()

    async def after_pass(self, listed: list, variations: dict, listed_at: float, ctx: dict):
        await super().after_pass(listed, variations, listed_at, ctx)
        wanted = self.wanted_users()
        for (run_id, i), v in variations.items():
            if v.get("status") == "running":
                wanted.add(user := self.users.variation_user(run_id, i))
                if user not in ctx["users"] and "container" in v:  # Redis restarted: back again
                    await self.users.variation(run_id, i)
        await self.users.sweep(ctx["users"], wanted)


if __name__ == "__main__":
    if sys.argv[1:] != ["server-args"]:
        sys.exit(__doc__)
    print("\n".join(server_args(sys.stdin.readline().strip())))
