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
from contextlib import suppress
from pathlib import Path

import redis.asyncio as redis
from chat_model import make_chat_model
from langchain_core.messages import HumanMessage, SystemMessage

# The settings, the topics, the envelope and the keys are the contract the gateway shares.
from lesson07_contract import (  # noqa: F401 - re-exported: the lesson's names in one place
    ALERTS,
    LEARNING,
    PROGRESS,
    SPECIALIST_TOPICS,
    TRACE,
    Backoff,
    Malformed,
    Settings,
    connect,
    deadletter,
    entry,
    envelope,
    event_id_of,
    parse,
    progress_key,
    question_data,
    question_key,
)

logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logger = logging.getLogger("agents")


# === Idempotent effects: the dedup record and the state change in one Lua script ===

# KEYS[1] is processed:<group>:<event id>, KEYS[2] the question's record. If the record exists the
# effect is already stored: do nothing. Redis does not roll a script back, so everything that can
# fail is checked before the first write, and the record is written last: a command that fails
# leaves no record, and the redelivery tries again (and ends in the dead-letter topic).
# A question no longer pending (answered, failed, expired or never asked) changes no more: -1.
APPLY_ONCE = """
local commands = cjson.decode(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'pending' then return -1 end
for _, command in ipairs(commands) do redis.call(unpack(command)) end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""

# The progress agent's effect reads its own state (streak, struggles), so it is a script of its own
# with the same first and last lines. KEYS: processed record, the student's hash, the alerts topic.
# ARGV: ttl, day number, route, topic, threshold, alert event (JSON, published when due), maxlen.
PROGRESS_ONCE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
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
  if n == tonumber(ARGV[5]) then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'data', ARGV[6])
  end
end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""

# A consumer still working renews its claim: XCLAIM by the owner resets the idle time, so no other
# consumer takes the message while the model answers. Only the owner: a claim lost is not stolen.
# KEYS[1] the topic; ARGV: group, message id, consumer.
RENEW_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending[1] == nil or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""

# A dead letter fails its question only if nobody answered it first. KEYS[1]: the record.
FAIL_IF_PENDING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1])
return 1
"""


class Bus:
    """Topics on Redis Streams: publish, read through a consumer group, ack, claim, dead-letter."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis, self.settings = client, settings
        self.apply_once = client.register_script(APPLY_ONCE)
        self.progress_once = client.register_script(PROGRESS_ONCE)
        self.renew_claim = client.register_script(RENEW_CLAIM)
        self.fail_if_pending = client.register_script(FAIL_IF_PENDING)

    def xadd(self, topic: str, event: dict) -> list:
        """The XADD command (for a script) that publishes `event`, keeping the topic bounded."""
        maxlen = self.settings.topic_maxlen
        return ["XADD", topic, "MAXLEN", "~", maxlen, "*", "data", json.dumps(event)]

    async def publish(self, topic: str, event: dict) -> str:
        return await self.redis.xadd(topic, entry(event), maxlen=self.settings.topic_maxlen)

    async def ensure_group(self, topic: str, group: str) -> None:
        try:  # from id 0: a group created after events were published still gets them all
            await self.redis.xgroup_create(topic, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def effect_once(
        self, group: str, event_id: str, question_id: str, commands: list[list]
    ) -> bool:
        """Run `commands` unless this group already stored the effect of `event_id`."""
        keys = [f"processed:{group}:{event_id}", question_key(question_id)]
        args = [self.settings.dedup_ttl_seconds, json.dumps(commands)]
        done = await self.apply_once(keys=keys, args=args)
        if done == -1:
            raise Malformed(f"question {question_id} is not pending (answered, failed or unknown)")
        return bool(done)

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
        event_id = event_id_of(fields)  # always a string, whatever the entry holds
        try:
            await self.bus.trace(self.topic, event_id, self.name, delivery, "delivered")
            if delivery > self.settings.max_deliveries:
                raise Malformed(
                    f"delivered {delivery} times (MAX_DELIVERIES is "
                    f"{self.settings.max_deliveries}): giving up"
                )
            event = parse(self.topic, fields)
            stored = await self.keep_claim_while(
                message_id, self.handler(event, delivery, self.name)
            )
            outcome = "done" if stored else "duplicate"
        except Malformed as exc:
            await self.dead_letter(message_id, fields, event_id, delivery, str(exc))
            return
        except (redis.ConnectionError, redis.TimeoutError):
            raise  # Redis is away: nothing acked, the loop waits for it
        except Exception as exc:  # noqa: BLE001 - the message stays pending and is retried
            logger.warning("%s: %s failed (delivery %d): %r", self.name, event_id, delivery, exc)
            with suppress(redis.RedisError):
                outcome = f"error: {exc!r}"[:200]
                await self.bus.trace(self.topic, event_id, self.name, delivery, outcome)
            return
        # Acked only now that the effect is stored. A crash before this line means a redelivery,
        # which the effect's dedup record turns into "duplicate".
        await self.bus.redis.xack(self.topic, self.group, message_id)
        await self.bus.trace(self.topic, event_id, self.name, delivery, outcome)

    async def keep_claim_while(self, message_id: str, work):
        """Await `work`, renewing the claim on the message every third of the visibility timeout
        (and the heartbeat with it: a long answer does not make the container unhealthy)."""

        async def renew() -> None:
            while True:
                await asyncio.sleep(self.settings.visibility_timeout_ms / 3000)
                Path(self.settings.heartbeat_file).touch()  # alive, though busy with one message
                try:
                    args = [self.group, message_id, self.name]
                    if not await self.bus.renew_claim(keys=[self.topic], args=args):
                        logger.warning("%s: lost the claim on %s", self.name, message_id)
                        return
                except redis.RedisError as exc:  # the work goes on; its effect is idempotent
                    logger.warning("%s: could not renew %s: %r", self.name, message_id, exc)

        renewing = asyncio.create_task(renew())
        try:
            return await work
        finally:
            renewing.cancel()

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
        pipe.xadd(
            deadletter(self.topic),
            {k: str(v) for k, v in dead.items()},
            maxlen=self.settings.deadletter_maxlen,
            approximate=True,
        )
        pipe.xack(self.topic, self.group, message_id)
        await pipe.execute()
        # The question failed unless it was answered already (a progress event can die after that),
        # and only a question the gateway recorded: a forged id creates no record.
        question_id = question_of(fields)
        if question_id and self.topic != PROGRESS:
            with suppress(redis.ResponseError):  # a record that is not a hash: nothing to mark
                await self.bus.fail_if_pending(
                    keys=[question_key(question_id)], args=[reason[:500]]
                )
        await self.bus.trace(self.topic, event_id, self.name, delivery, "deadletter")

    async def run(self) -> None:
        backoff, joined = Backoff(), False
        while not self.stopping:
            Path(self.settings.heartbeat_file).touch()
            try:
                if not joined:  # at start, and after a failure (Redis may have lost the group)
                    await self.bus.ensure_group(self.topic, self.group)
                    logger.info("%s reading %s as group %s", self.name, self.topic, self.group)
                    joined = True
                message = await self.next_message()
                backoff.reset()
                if message:
                    await self.handle(*message)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.bus.ensure_group(self.topic, self.group)  # Redis lost its data
                    continue
                # Out of memory, read-only replica, a script refused: never a reason to stop.
                delay = backoff.delay()
                logger.warning("%s: Redis refused (%r); again in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
            except redis.RedisError as exc:
                joined, delay = False, backoff.delay()
                logger.warning("%s: Redis unavailable (%r); again in %.1f s", self.name, exc, delay)
                # The next command opens a new connection, resolving the name again.
                await self.bus.redis.connection_pool.disconnect()
                await asyncio.sleep(delay)
        logger.info("%s stopped between messages", self.name)


def question_of(fields: dict) -> str | None:
    """The question id inside a possibly malformed entry, to mark the question failed."""
    try:
        value = json.loads(fields.get("data", "")).get("data", {}).get("question_id")
    except (ValueError, AttributeError, RecursionError):
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
            data["question_id"],
            [
                ["HSET", question_key(data["question_id"]), "route", kind, "topic", topic],
                bus.xadd(SPECIALIST_TOPICS[kind], routed),
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
        settings.openai_api_key or None,
        settings.model_name,
        settings.offline_token_delay_ms,
        timeout_seconds=settings.model_timeout_seconds,
    )

    async def specialist(event: dict, delivery: int, consumer: str) -> bool:
        data = question_data(event)
        if await bus.redis.exists(f"processed:{kind}:{event['id']}"):
            return False  # answered before a crash that came ahead of the ack: no second call
        record = question_key(data["question_id"])
        if await bus.redis.hget(record, "status") != "pending":
            raise Malformed(f"question {data['question_id']} is not pending")  # no model call
        await bus.redis.hset(record, "attempts", delivery)
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
            data["question_id"],
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
                bus.xadd(PROGRESS, done),
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
            settings.topic_maxlen,
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
    await consumer.run()  # waits for Redis, with back-off, however long it is away
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
