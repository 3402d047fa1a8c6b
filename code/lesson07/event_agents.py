"""Lesson 07: agents as event-driven services that talk only through topics (Redis Streams).

Run it:  make lesson-07  (one image, a container per service, Redis with AOF, the gateway on :8070)
Or one service on the host:  python -m lesson07.event_agents triage   (REDIS_URL picks the Redis)

    gateway ─▶ learning.requests ─▶ triage ─┬▶ concept.requests  ─▶ concepts ─┐
                                            ├▶ debug.requests    ─▶ debug    ─┼▶ progress.requests
                                            └▶ exercise.requests ─▶ exercise ─┘        │
                                                                    struggle.alerts ◀─ progress

Delivery is at least once: each service reads through its own consumer group, stores its effect and
only then acks. A consumer that dies leaves its message pending; a live one claims it after
VISIBILITY_TIMEOUT_MS (XAUTOCLAIM). So a message can arrive twice, and every effect is written
together with the record of the event id it came from (one Lua script): the second time, nothing
changes. In order: the idempotent effects, the bus, the consumer loop, the five services, the
command line. The settings, topics, envelope and keys are lesson07.contract's; the hardening that
docs/07 keeps under "Going further" is in the lesson07 package's modules imported below, one per
topic.
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
from langchain_core.messages import HumanMessage, SystemMessage
from redis.backoff import ExponentialBackoff

from chat_model import make_chat_model

# The hardening docs/07 keeps under "Going further", one module per topic.
from lesson07.acks import dead_letter  # what is acked, and when
from lesson07.claims import keep_claim_while  # a long answer keeps its claim

# The settings, the topics, the envelope and the keys are the contract the gateway shares.
from lesson07.contract import (  # noqa: F401 - re-exported: the lesson's names in one place
    ALERTS,
    LEARNING,
    PROGRESS,
    SPECIALIST_TOPICS,
    TRACE,
    AgentSettings,
    Malformed,
    asked_key,
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
from lesson07.progress import make_progress  # the progress agent's effect
from lesson07.trace import follow_trace  # `make lesson-07-trace` reads what Bus.trace writes

# Lesson 09's spans use the research agent's tracing setup (its installed `research_agent` package).
from lesson07.tracing import configure, delivery_span, record_outcome, trace_context

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


class Bus:
    """Topics on Redis Streams: publish, read through a consumer group, ack, claim, dead-letter."""

    def __init__(self, client: redis.Redis, settings: AgentSettings):
        self.redis, self.settings = client, settings
        self.apply_once = client.register_script(APPLY_ONCE)

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
        record_outcome(outcome)  # on the delivery's span too, when tracing is on
        await self.redis.xadd(TRACE, fields, maxlen=self.settings.trace_length, approximate=True)


# === The consumer loop: read, handle, store the effect, ack; claim what the dead left behind ===


class Consumer:
    """One service: one consumer group on one topic, one message at a time.

    Scaling out is more processes (containers) in the same group: Redis hands each new message to
    exactly one of them, and each keeps its own pending list until it acks.
    """

    def __init__(self, bus: Bus, topic: str, group: str, handler, settings: AgentSettings):
        self.bus, self.topic, self.group, self.handler = bus, topic, group, handler
        self.settings = settings
        # Unique per process start: a restarted container is a new consumer, visible in the trace.
        self.name = f"{group}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.stopping = False
        self.cursor = "0-0"  # where the next look at the pending list starts (next_message)

    async def next_message(self) -> tuple[str, dict, int] | None:
        """A message idle past the visibility timeout first (claimed), else a new one. The pending
        list is scanned from where the last look stopped: Redis looks at ten entries for each one
        asked for, so restarting at 0-0 would never reach an idle entry behind ten busy ones."""
        r = self.bus.redis
        self.cursor, claimed, _ = await r.xautoclaim(
            self.topic, self.group, self.name, self.settings.visibility_timeout_ms, self.cursor, 1
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
            # Renewed while the handler works: a long answer is not taken over (lesson07.claims).
            stored = await keep_claim_while(
                self, message_id, self.handler(event, delivery, self.name)
            )
            outcome = "done" if stored else "duplicate"
        except Malformed as exc:
            await dead_letter(self, message_id, fields, event_id, delivery, str(exc))
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

    async def run(self) -> None:
        # Waits 0.5 s, 1 s, 2 s ... up to 10 s between attempts to reach Redis, from the first
        # again once one succeeds. Each attempt opens a new connection, so the name is resolved
        # again (a DNS hiccup passes).
        backoff, failures, joined = ExponentialBackoff(cap=10, base=0.5), 0, False
        while not self.stopping:
            Path(self.settings.heartbeat_file).touch()
            try:
                if not joined:  # at start, and after a failure (Redis may have lost the group)
                    await self.bus.ensure_group(self.topic, self.group)
                    logger.info("%s reading %s as group %s", self.name, self.topic, self.group)
                    joined = True
                message = await self.next_message()
                failures = 0
                if message:  # one span per delivery, in the trace its event carries
                    with delivery_span(self.topic, self.group, self.name, *message):
                        await self.handle(*message)
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self.bus.ensure_group(self.topic, self.group)  # Redis lost its data
                    continue
                # Out of memory, read-only replica, a script refused: never a reason to stop.
                delay, failures = backoff.compute(failures), failures + 1
                logger.warning("%s: Redis refused (%r); again in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
            except redis.RedisError as exc:
                joined, delay, failures = False, backoff.compute(failures), failures + 1
                logger.warning("%s: Redis unavailable (%r); again in %.1f s", self.name, exc, delay)
                # The next command opens a new connection, resolving the name again.
                await self.bus.redis.connection_pool.disconnect()
                await asyncio.sleep(delay)
        logger.info("%s stopped between messages", self.name)


# === The five services ===

TOPICS = ("docker", "kubernetes", "redis", "python", "fastapi", "langchain")
DEBUG_HINTS = re.compile(
    r"Traceback \(most recent call last\)|\b\w+Error\b|\bexception\b|\berror\b",
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


def make_triage(bus: Bus, settings: AgentSettings):
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
            **trace_context(),
        )
        return await bus.effect_once(
            "triage",
            event["id"],
            data["question_id"],
            [
                ["HSET", question_key(data["question_id"]), "route", kind, "topic", topic],
                ["HSET", asked_key(data["question_id"]), "route", kind, "topic", topic],
                bus.xadd(SPECIALIST_TOPICS[kind], routed),
            ],
        )

    return triage


# Each specialist is the model with its own instructions (the steps' prompt, the same words).
PROMPT = "You are the course's {kind} specialist: answer in a few lines."


def make_specialist(kind: str, bus: Bus, settings: AgentSettings):
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
        reply = await model.ainvoke(
            [SystemMessage(PROMPT.format(kind=kind)), HumanMessage(data["text"])]
        )
        done = envelope(
            f"{data['question_id']}.answered",
            f"/lesson07/{kind}",
            "learning.question.answered",
            {**data, "answered_by": kind},
            **trace_context(),
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


SERVICES = {
    "triage": (LEARNING, make_triage),
    **{
        kind: (topic, lambda bus, s, k=kind: make_specialist(k, bus, s))
        for kind, topic in SPECIALIST_TOPICS.items()
    },
    "progress": (PROGRESS, make_progress),
}


async def serve(service: str, settings: AgentSettings) -> None:
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


def main(argv: list[str]) -> None:
    usage = f"usage: {argv[0]} {{{','.join(SERVICES)},trace}}"
    if len(argv) != 2 or argv[1] not in (*SERVICES, "trace"):
        sys.exit(usage)
    settings = AgentSettings()
    if argv[1] == "trace":
        asyncio.run(follow_trace(settings, last="0-0" if settings.trace_all else "$"))
    else:
        configure(argv[1])  # traces, if OTEL_EXPORTER_OTLP_ENDPOINT is set (lesson 09)
        asyncio.run(serve(argv[1], settings))


if __name__ == "__main__":
    main(sys.argv)
