"""Lesson 07: agents as event-driven services that talk only through topics (Redis Streams).

Run it:  make lesson-07  (one image, a container per service, Redis with AOF, the gateway on :8070)
Or one service on the host:  python code/07_event_agents.py triage   (REDIS_URL picks the Redis)

    gateway ─▶ learning.requests ─▶ triage ─┬▶ concept.requests  ─▶ concepts ─┐
                                            ├▶ debug.requests    ─▶ debug    ─┼▶ progress.requests
                                            └▶ exercise.requests ─▶ exercise ─┘        │
                                                                    struggle.alerts ◀─ progress

Delivery is at least once: each service reads through its own consumer group, stores its effect and
only then acks. A consumer that dies leaves its message pending; a live one claims it after
VISIBILITY_TIMEOUT_MS (XAUTOCLAIM). So a message can arrive twice, and every effect is written
together with the record of the event id it came from (one Lua script): the second time, nothing
changes. In order: the settings, the envelope, the idempotent effects, the consumer loop, the five
services, the trace, the command line.
"""

import asyncio
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as redis
from chat_model import make_chat_model
from langchain_core.messages import HumanMessage, SystemMessage

logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("agents")


# === Settings: the only place that reads the environment ===


@dataclass(frozen=True)
class Settings:
    redis_url: str = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    # A pending message idle this long belongs to a consumer presumed dead: a live one claims it.
    visibility_timeout_ms: int = int(os.environ.get("VISIBILITY_TIMEOUT_MS", "5000"))
    # Delivered more often than this, a message goes to <topic>.deadletter instead.
    max_deliveries: int = int(os.environ.get("MAX_DELIVERIES", "5"))
    # How long an event id is remembered as processed: longer than any redelivery can take.
    dedup_ttl_seconds: int = int(os.environ.get("DEDUP_TTL_SECONDS", str(7 * 24 * 3600)))
    struggle_threshold: int = int(os.environ.get("STRUGGLE_THRESHOLD", "3"))
    openai_api_key: str | None = os.environ.get("OPENAI_API_KEY") or None
    model_name: str = os.environ.get("MODEL_NAME", "gpt-4o-mini")
    offline_token_delay_ms: int = int(os.environ.get("OFFLINE_TOKEN_DELAY_MS", "20"))
    heartbeat_file: str = os.environ.get("HEARTBEAT_FILE", "/tmp/heartbeat")
    trace_length: int = int(os.environ.get("TRACE_LENGTH", "10000"))


# === Topics and the CloudEvents envelope ===

LEARNING, PROGRESS, ALERTS = "learning.requests", "progress.requests", "struggle.alerts"
SPECIALIST_TOPICS = {
    "concepts": "concept.requests",
    "debug": "debug.requests",
    "exercise": "exercise.requests",
}
TRACE = "trace"  # one entry per delivery and per outcome, for `make lesson-07-trace`


def deadletter(topic: str) -> str:
    return f"{topic}.deadletter"


def question_key(question_id: str) -> str:
    # hash: student_id, status, route, topic, answer, answered_by, attempts, error
    return f"question:{question_id}"


def progress_key(student_id: str) -> str:
    # hash: questions, streak, last_day, topic:<t>, kind:<route>, struggle:<t>
    return f"progress:{student_id}"


def envelope(event_id: str, source: str, event_type: str, data: dict) -> dict:
    """A CloudEvents 1.0 envelope, the format Dapr wraps every pub/sub message in."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "datacontenttype": "application/json",
        "data": data,
    }


class Malformed(ValueError):
    """An event no number of retries can fix: it goes straight to the dead-letter topic."""


def parse(fields: dict) -> dict:
    """The envelope of a stream entry (one field, `data`, as Dapr's Redis component stores it)."""
    try:
        event = json.loads(fields["data"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Malformed(f"not a JSON CloudEvent: {exc!r}") from None
    if not isinstance(event, dict) or event.get("specversion") != "1.0":
        raise Malformed("not a CloudEvents 1.0 envelope")
    missing = [k for k in ("id", "source", "type", "data") if not event.get(k)]
    if missing or not isinstance(event["data"], dict):
        raise Malformed(f"missing or invalid attributes: {missing or ['data']}")
    return event


def entry(event: dict) -> dict:
    return {"data": json.dumps(event)}


# === Idempotent effects: the dedup record and the state change in one Lua script ===

# KEYS[1] is processed:<group>:<event id>. If it exists the effect is already stored: do nothing.
# Otherwise run the effect's commands (a JSON list) and write the record, all or nothing.
APPLY_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
for _, command in ipairs(cjson.decode(ARGV[2])) do redis.call(unpack(command)) end
return 1
"""

# The progress agent's effect reads its own state (streak, struggles), so it is a script of its own
# with the same first line. KEYS: processed record, the student's hash, the alerts topic.
# ARGV: ttl, day number, route, topic, threshold, alert event (JSON, published when due).
PROGRESS_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
local day, route, topic = tonumber(ARGV[2]), ARGV[3], ARGV[4]
redis.call('HINCRBY', KEYS[2], 'questions', 1)
redis.call('HINCRBY', KEYS[2], 'topic:' .. topic, 1)
redis.call('HINCRBY', KEYS[2], 'kind:' .. route, 1)
local last = tonumber(redis.call('HGET', KEYS[2], 'last_day') or '-1')
if last == day - 1 then redis.call('HINCRBY', KEYS[2], 'streak', 1)
elseif last ~= day then redis.call('HSET', KEYS[2], 'streak', 1) end
redis.call('HSET', KEYS[2], 'last_day', day)
if route == 'debug' then
  local n = redis.call('HINCRBY', KEYS[2], 'struggle:' .. topic, 1)
  if n == tonumber(ARGV[5]) then redis.call('XADD', KEYS[3], '*', 'data', ARGV[6]) end
end
return 1
"""


class Bus:
    """Topics on Redis Streams: publish, read through a consumer group, ack, claim, dead-letter."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis, self.settings = client, settings
        self.apply_once = client.register_script(APPLY_ONCE)
        self.progress_once = client.register_script(PROGRESS_ONCE)

    async def publish(self, topic: str, event: dict) -> str:
        return await self.redis.xadd(topic, entry(event))

    async def ensure_group(self, topic: str, group: str) -> None:
        try:  # from id 0: a group created after events were published still gets them all
            await self.redis.xgroup_create(topic, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def effect_once(self, group: str, event_id: str, commands: list[list]) -> bool:
        """Run `commands` unless this group already stored the effect of `event_id`."""
        keys = [f"processed:{group}:{event_id}"]
        args = [self.settings.dedup_ttl_seconds, json.dumps(commands)]
        return bool(await self.apply_once(keys=keys, args=args))

    async def trace(self, topic: str, event_id: str, consumer: str, delivery: int, outcome: str):
        fields = {
            "topic": topic,
            "event_id": event_id,
            "consumer": consumer,
            "delivery": delivery,
            "outcome": outcome,
            "at": f"{time.time():.3f}",
        }
        await self.redis.xadd(TRACE, fields, maxlen=self.settings.trace_length, approximate=True)


# === The consumer loop: read, handle, store the effect, ack; claim what the dead left behind ===


class Consumer:
    """One service: one consumer group on one topic, one message at a time.

    Scaling out is more processes (containers) in the same group: Redis hands each new message to
    exactly one of them, and each keeps its own pending list until it acks.
    """

    def __init__(self, bus: Bus, topic: str, group: str, handler, settings: Settings):
        self.bus, self.topic, self.group, self.handler = bus, topic, group, handler
        self.settings = settings
        # Unique per process start: a restarted container is a new consumer, visible in the trace.
        self.name = f"{group}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.stopping = False

    async def next_message(self) -> tuple[str, dict, int] | None:
        """A message idle past the visibility timeout first (claimed), else a new one."""
        r = self.bus.redis
        _, claimed, _ = await r.xautoclaim(
            self.topic, self.group, self.name, self.settings.visibility_timeout_ms, "0-0", count=1
        )
        if claimed:
            message_id, fields = claimed[0]
            pending = await r.xpending_range(self.topic, self.group, message_id, message_id, 1)
            return message_id, fields, pending[0]["times_delivered"] if pending else 1
        read = await r.xreadgroup(self.group, self.name, {self.topic: ">"}, count=1, block=1000)
        if not read:
            return None
        message_id, fields = read[0][1][0]
        return message_id, fields, 1

    async def handle(self, message_id: str, fields: dict, delivery: int) -> None:
        event_id = "?"
        try:
            event = parse(fields)
            event_id = event["id"]
            await self.bus.trace(self.topic, event_id, self.name, delivery, "delivered")
            if delivery > self.settings.max_deliveries:
                raise Malformed(
                    f"delivered {delivery} times (MAX_DELIVERIES is "
                    f"{self.settings.max_deliveries}): giving up"
                )
            stored = await self.handler(event, delivery, self.name)
            outcome = "done" if stored else "duplicate"
        except Malformed as exc:
            await self.dead_letter(message_id, fields, event_id, delivery, str(exc))
            return
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # Redis is away: nothing acked, the loop waits for it
        except Exception as exc:  # noqa: BLE001 - the message stays pending and is retried
            logger.warning("%s: %s failed (delivery %d): %r", self.name, event_id, delivery, exc)
            await self.bus.trace(self.topic, event_id, self.name, delivery, f"error: {exc!r}"[:200])
            return
        # Acked only now that the effect is stored. A crash before this line means a redelivery,
        # which the effect's dedup record turns into "duplicate".
        await self.bus.redis.xack(self.topic, self.group, message_id)
        await self.bus.trace(self.topic, event_id, self.name, delivery, outcome)

    async def dead_letter(self, message_id, fields, event_id, delivery, reason) -> None:
        logger.warning("%s: %s to %s: %s", self.name, message_id, deadletter(self.topic), reason)
        dead = {
            **fields,
            "reason": reason,
            "source_topic": self.topic,
            "group": self.group,
            "message_id": message_id,
            "deliveries": delivery,
        }
        pipe = self.bus.redis.pipeline(transaction=True)  # dead letter and ack together
        pipe.xadd(deadletter(self.topic), {k: str(v) for k, v in dead.items()})
        pipe.xack(self.topic, self.group, message_id)
        await pipe.execute()
        # The question failed unless it was answered already (a progress event can die after that),
        # and only a question the gateway recorded: a forged id creates no record.
        question_id = question_of(fields)
        if question_id and self.topic != PROGRESS:
            key = question_key(question_id)
            if await self.bus.redis.hget(key, "status") == "pending":
                await self.bus.redis.hset(key, mapping={"status": "failed", "error": reason[:500]})
        await self.bus.trace(self.topic, event_id, self.name, delivery, "deadletter")

    async def run(self) -> None:
        await self.bus.ensure_group(self.topic, self.group)
        logger.info("%s reading %s as group %s", self.name, self.topic, self.group)
        while not self.stopping:
            Path(self.settings.heartbeat_file).touch()
            try:
                message = await self.next_message()
                if message:
                    await self.handle(*message)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("%s: Redis unavailable (%r); retrying in 1 s", self.name, exc)
                await asyncio.sleep(1)
            except redis.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.bus.ensure_group(self.topic, self.group)  # Redis lost its data
        logger.info("%s stopped between messages", self.name)


def question_of(fields: dict) -> str | None:
    """The question id inside a possibly malformed entry, to mark the question failed."""
    try:
        value = json.loads(fields.get("data", "")).get("data", {}).get("question_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) else None


# === The five services ===

TOPICS = ("docker", "kubernetes", "redis", "python", "fastapi", "langchain")
DEBUG_HINTS = re.compile(
    r"Traceback \(most recent call last\)|\b\w+Error\b|\bexception\b|\berror\b|\bstack trace\b",
    re.IGNORECASE,
)
EXERCISE_HINTS = re.compile(r"\b(exercises?|practice|quiz|drill)\b", re.IGNORECASE)


def route(text: str) -> str:
    """Conditional routing by rules: deterministic, offline and cheap. Errors win over exercises."""
    if DEBUG_HINTS.search(text):
        return "debug"
    if EXERCISE_HINTS.search(text):
        return "exercise"
    return "concepts"


def topic_of(text: str) -> str:
    lowered = text.lower()
    return next((t for t in TOPICS if re.search(rf"\b{t}\b", lowered)), "general")


def question_data(event: dict) -> dict:
    data = event["data"]
    if not (
        isinstance(data.get("question_id"), str)
        and re.fullmatch(r"[0-9a-f]{32}", data["question_id"])
    ):
        raise Malformed("data.question_id must be 32 hex characters")
    if not isinstance(data.get("student_id"), str) or not isinstance(data.get("text"), str):
        raise Malformed("data.student_id and data.text must be strings")
    return data


def make_triage(bus: Bus, settings: Settings):
    async def triage(event: dict, delivery: int, consumer: str) -> bool:
        data = question_data(event)
        kind, topic = route(data["text"]), topic_of(data["text"])
        # The routed event's id is derived from the incoming one: a redelivered question
        # republishes nothing, and downstream dedup sees the same id if it ever did.
        routed = envelope(
            f"{data['question_id']}.routed",
            "/lesson07/triage",
            "learning.question.routed",
            {**data, "route": kind, "topic": topic},
        )
        return await bus.effect_once(
            "triage",
            event["id"],
            [
                ["HSET", question_key(data["question_id"]), "route", kind, "topic", topic],
                ["XADD", SPECIALIST_TOPICS[kind], "*", "data", json.dumps(routed)],
            ],
        )

    return triage


PROMPTS = {
    "concepts": "You explain one concept clearly, with a short example.",
    "debug": "You read an error or traceback and say what caused it and how to fix it.",
    "exercise": "You write one short exercise on the topic, with a hint.",
}


def make_specialist(kind: str, bus: Bus, settings: Settings):
    model = make_chat_model(
        settings.openai_api_key,
        settings.model_name,
        settings.offline_token_delay_ms,
        timeout_seconds=60,
    )

    async def specialist(event: dict, delivery: int, consumer: str) -> bool:
        data = question_data(event)
        if await bus.redis.exists(f"processed:{kind}:{event['id']}"):
            return False  # answered before a crash that came ahead of the ack: no second call
        await bus.redis.hset(question_key(data["question_id"]), "attempts", delivery)
        reply = await model.ainvoke([SystemMessage(PROMPTS[kind]), HumanMessage(data["text"])])
        done = envelope(
            f"{data['question_id']}.answered",
            f"/lesson07/{kind}",
            "learning.question.answered",
            {**data, "answered_by": kind},
        )
        return await bus.effect_once(
            kind,
            event["id"],
            [
                [
                    "HSET",
                    question_key(data["question_id"]),
                    "status",
                    "answered",
                    "answer",
                    reply.text,
                    "answered_by",
                    consumer,
                    "attempts",
                    delivery,
                ],
                ["XADD", PROGRESS, "*", "data", json.dumps(done)],
            ],
        )

    return specialist


def make_progress(bus: Bus, settings: Settings):
    async def progress(event: dict, delivery: int, consumer: str) -> bool:
        data = question_data(event)
        if data.get("route") not in SPECIALIST_TOPICS or not isinstance(data.get("topic"), str):
            raise Malformed("data.route and data.topic are required")
        alert = envelope(
            f"{data['question_id']}.struggle",
            "/lesson07/progress",
            "learning.student.struggling",
            {
                "student_id": data["student_id"],
                "topic": data["topic"],
                "debug_requests": settings.struggle_threshold,
            },
        )
        day = int(time.time() // 86400)
        keys = [f"processed:progress:{event['id']}", progress_key(data["student_id"]), ALERTS]
        args = [
            settings.dedup_ttl_seconds,
            day,
            data["route"],
            data["topic"],
            settings.struggle_threshold,
            json.dumps(alert),
        ]
        return bool(await bus.progress_once(keys=keys, args=args))

    return progress


async def read_progress(client: redis.Redis, student_id: str, threshold: int = 3) -> dict:
    """The progress agent's state as the gateway shows it (the one place that reads its layout)."""
    raw = await client.hgetall(progress_key(student_id))
    fields = {k: int(v) for k, v in raw.items()}

    def group(prefix: str) -> dict:
        return {k.removeprefix(prefix): v for k, v in fields.items() if k.startswith(prefix)}

    struggles = group("struggle:")
    return {
        "student_id": student_id,
        "questions": fields.get("questions", 0),
        "streak": fields.get("streak", 0),
        "topics": group("topic:"),
        "kinds": group("kind:"),
        "struggles": struggles,
        "alerts": sorted(t for t, n in struggles.items() if n >= threshold),
    }


SERVICES = {
    "triage": (LEARNING, make_triage),
    **{
        kind: (topic, lambda bus, s, k=kind: make_specialist(k, bus, s))
        for kind, topic in SPECIALIST_TOPICS.items()
    },
    "progress": (PROGRESS, make_progress),
}


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_connect_timeout=3,
        health_check_interval=10,
    )


async def serve(service: str, settings: Settings) -> None:
    client = connect(settings)
    bus = Bus(client, settings)
    topic, make_handler = SERVICES[service]
    consumer = Consumer(bus, topic, service, make_handler(bus, settings), settings)

    def stop() -> None:  # docker stop: finish the message in hand, then leave (BLOCK is 1 s)
        consumer.stopping = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    while True:
        try:
            await consumer.run()
            break
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            logger.warning("Redis unavailable at start (%r); retrying in 1 s", exc)
            await asyncio.sleep(1)
    await client.aclose()


# === The trace: every delivery and outcome, as it happens ===


async def follow_trace(settings: Settings, last: str = "$", limit: int | None = None) -> None:
    client, shown = connect(settings), 0
    print(f"{'time':8}  {'topic':20} {'event id':42} {'consumer':34} {'try':>3}  outcome")
    while limit is None or shown < limit:
        read = await client.xread({TRACE: last}, block=1000, count=100)
        for _, entries in read:
            for entry_id, f in entries:
                last = entry_id
                at = time.strftime("%H:%M:%S", time.localtime(float(f["at"])))
                print(
                    f"{at:8}  {f['topic']:20} {f['event_id']:42} {f['consumer']:34} "
                    f"{f['delivery']:>3}  {f['outcome']}",
                    flush=True,
                )
                shown += 1


def main(argv: list[str]) -> None:
    usage = f"usage: {argv[0]} {{{','.join(SERVICES)},trace}}"
    if len(argv) != 2 or argv[1] not in (*SERVICES, "trace"):
        sys.exit(usage)
    settings = Settings()
    if argv[1] == "trace":
        asyncio.run(follow_trace(settings, last="0-0" if os.environ.get("TRACE_ALL") else "$"))
    else:
        asyncio.run(serve(argv[1], settings))


if __name__ == "__main__":
    main(sys.argv)
