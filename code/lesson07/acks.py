"""Lesson 07, going further: what is acked, and when (docs/07, "What is acked, and when").

An event that can never succeed goes to `<topic>.deadletter` with the reason and is acked in the
same transaction, whatever the entry holds; its question is marked failed, unless someone answered
it first. Called by event_agents.py's Consumer.handle.
"""

import json
import logging
import re
from contextlib import suppress

import redis.asyncio as redis

from lesson07.contract import PROGRESS, deadletter, question_key

logger = logging.getLogger("agents")

# A dead letter fails its question only if nobody answered it first. KEYS[1]: the record.
FAIL_IF_PENDING = """
if redis.call('HGET', KEYS[1], 'status') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[1])
return 1
"""


async def dead_letter(consumer, message_id, fields, event_id, delivery, reason) -> None:
    """Move the message `consumer` holds to its topic's dead-letter topic, and ack it."""
    bus, topic = consumer.bus, consumer.topic
    logger.warning("%s: %s to %s: %s", consumer.name, message_id, deadletter(topic), reason)
    dead = {
        **fields,
        "reason": reason,
        "source_topic": topic,
        "group": consumer.group,
        "message_id": message_id,
        "deliveries": delivery,
    }
    pipe = bus.redis.pipeline(transaction=True)  # dead letter and ack together
    pipe.xadd(
        deadletter(topic),
        {k: str(v) for k, v in dead.items()},
        maxlen=consumer.settings.deadletter_maxlen,
        approximate=True,
    )
    pipe.xack(topic, consumer.group, message_id)
    await pipe.execute()
    # The question failed unless it was answered already (a progress event can die after that),
    # and only a question the gateway recorded: a forged id creates no record.
    question_id = question_of(fields)
    if question_id and topic != PROGRESS:
        fail_if_pending = bus.redis.register_script(FAIL_IF_PENDING)
        with suppress(redis.ResponseError):  # a record that is not a hash: nothing to mark
            await fail_if_pending(keys=[question_key(question_id)], args=[reason[:500]])
    await bus.trace(topic, event_id, consumer.name, delivery, "deadletter")


def question_of(fields: dict) -> str | None:
    """The question id inside a possibly malformed entry, to mark the question failed."""
    try:
        value = json.loads(fields.get("data", "")).get("data", {}).get("question_id")
    except (ValueError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value) else None
