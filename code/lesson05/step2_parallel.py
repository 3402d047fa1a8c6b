"""Lesson 05, step 2: N variations at once, each in its container, their events read together.

Run it:  make lesson-05 STEP=2   (builds the image, starts Redis on a Docker network of its own)
"""

import asyncio
import os
import uuid

import redis.asyncio as redis

from lesson05.container import start
from research_agent import worker_events_key

REDIS_URL = os.environ["REDIS_URL"]  # Redis for this script, allowed every key (make sets it)
QUERY = "How do I stop a container gracefully?"
VARIATIONS = 3  # the first three presets
r = redis.Redis.from_url(REDIS_URL, decode_responses=True)  # asyncio: awaited, never blocks


async def variation(run_id: str, index: int, query: str) -> int:
    """Start a variation's container and wait for its exit, in threads: the SDK blocks."""
    container = await asyncio.to_thread(start, run_id, index, query)
    print(f"Variation {index} in container {container.short_id}")
    exit_code = (await asyncio.to_thread(container.wait))["StatusCode"]
    await asyncio.to_thread(container.remove)
    return exit_code


async def follow(streams: dict[str, str], tasks: list[asyncio.Task]) -> None:
    """Print each event the workers add to their streams, as it comes, until all have exited."""
    while True:
        exited = all(task.done() for task in tasks)  # asked first: once they have, all is written
        found = await r.xread(streams, block=None if exited else 1000)  # every stream at once
        for key, entries in found:
            for entry_id, fields in entries:
                streams[key] = entry_id  # the next read starts after it
                if fields["event"] != "token":  # a token is a word; `final` has the whole answer
                    print(f"{fields['event']:<13}{fields['data'][:80]}")
        if exited and not found:
            return


async def main() -> None:
    run_id = uuid.uuid4().hex
    print(f"Run {run_id}: {VARIATIONS} variations at once")
    tasks = [asyncio.create_task(variation(run_id, i, QUERY)) for i in range(VARIATIONS)]
    await follow({worker_events_key(run_id, i): "0-0" for i in range(VARIATIONS)}, tasks)
    for index, task in enumerate(tasks):
        print(f"Variation {index}: exit code {task.result()}; its container is removed")


if __name__ == "__main__":
    asyncio.run(main())
