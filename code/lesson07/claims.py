"""Lesson 07, going further: a long answer keeps its claim (docs/07, the section of that name).

The visibility timeout says when a consumer is presumed dead, and a model call can take longer. So
while a consumer works on a message it renews its claim every third of the timeout: no idle
consumer takes over a message whose consumer is alive. One that dies stops renewing, and the message
is claimed as before (XAUTOCLAIM in event_agents.py's Consumer.next_message).
"""

import asyncio
import contextlib
import logging
from pathlib import Path

import redis.asyncio as redis

logger = logging.getLogger("agents")

# A consumer still working renews its claim: XCLAIM by the owner resets the idle time, so no other
# consumer takes the message while the model answers. Only the owner: a claim lost is not stolen.
# KEYS[1] the topic; ARGV: group, message id, consumer.
RENEW_CLAIM = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if pending[1] == nil or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


async def keep_claim_while(consumer, message_id: str, work):
    """Await `work`, renewing `consumer`'s claim on the message every third of the visibility
    timeout (and the heartbeat with it: a long answer does not make the container unhealthy)."""
    settings = consumer.settings
    renew_claim = consumer.bus.redis.register_script(RENEW_CLAIM)
    done = asyncio.Event()

    async def renew() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), settings.visibility_timeout_ms / 3000)
            if done.is_set():
                return
            Path(settings.heartbeat_file).touch()  # alive, though busy with one message
            try:
                args = [consumer.group, message_id, consumer.name]
                if not await renew_claim(keys=[consumer.topic], args=args):
                    logger.warning("%s: lost the claim on %s", consumer.name, message_id)
                    return
            except redis.RedisError as exc:  # the work goes on; its effect is idempotent
                logger.warning("%s: could not renew %s: %r", consumer.name, message_id, exc)

    renewing = asyncio.create_task(renew())
    try:
        return await work
    finally:
        # Ended, not cancelled: a renewal cut in the middle of its command could outlive the work
        # (seen: a failed delivery whose claim was renewed on, so it was never delivered again).
        # The renewal under way finishes, and none starts after it.
        done.set()
        with contextlib.suppress(Exception):
            await renewing
