"""Lesson 05, step 3: one stream per run: every variation's events copied into it, read from it.

Run it:  make lesson-05 STEP=3   (builds the image, starts Redis on a Docker network of its own)
"""

import asyncio
import json
import os
import uuid

import redis.asyncio as redis

from lesson05.container import PRESETS, start
from research_agent import WORKER_EVENTS, events_key, worker_events_key

REDIS_URL = os.environ["REDIS_URL"]  # Redis for this script, allowed every key (make sets it)
QUERY = "How do I stop a container gracefully?"
VARIATIONS = 3  # the first three presets
r = redis.Redis.from_url(REDIS_URL, decode_responses=True)  # asyncio: awaited, never blocks


async def variation(run_id: str, index: int, query: str) -> int:
    """Start a variation's container and wait for its exit, in threads: the SDK blocks."""
    container = await asyncio.to_thread(start, run_id, index, query)
    data = {"variation": index, "container": container.short_id}
    await add_event(run_id, "container_started", data)
    exit_code = (await asyncio.to_thread(container.wait))["StatusCode"]
    await asyncio.to_thread(container.remove)
    return exit_code


async def add_event(run_id: str, event: str, data: dict) -> str:
    """Add an event of the run's own to the run's stream; Redis gives it its id."""
    return await r.xadd(events_key(run_id), {"event": event, "data": json.dumps(data)})


async def relay(run_id: str, streams: dict[str, str], block_ms: int | None) -> bool:
    """Copy what the workers added to their streams into the run's stream: False if nothing."""
    found = await r.xread(streams, block=block_ms)  # every stream at once
    for key, entries in found:
        for entry_id, fields in entries:
            streams[key] = entry_id  # the next read starts after it
            if fields.get("event") in WORKER_EVENTS:  # a worker's own: never a run_done
                await r.xadd(events_key(run_id), fields)
    return bool(found)


async def run(run_id: str, query: str, count: int) -> None:
    """The run's variations at once, their events relayed until all have exited; then run_done."""
    tasks = [asyncio.create_task(variation(run_id, i, query)) for i in range(count)]
    streams = {worker_events_key(run_id, i): "0-0" for i in range(count)}
    while True:
        exited = all(task.done() for task in tasks)  # asked first: once they have, all is written
        if not await relay(run_id, streams, None if exited else 1000) and exited:
            break
    await add_event(run_id, "run_done", {"variation": None, "status": "done"})


async def follow(run_id: str, last_id: str = "0-0"):
    """The run's events after `last_id` (0-0: all), with their ids, as they come, to run_done."""
    while True:
        found = await r.xread({events_key(run_id): last_id}, block=1000)  # up to 1 s for more
        for _, entries in found:
            for entry_id, fields in entries:
                last_id = entry_id  # the next read starts after it
                yield entry_id, fields
                if fields["event"] == "run_done":
                    return


async def main() -> None:
    run_id = uuid.uuid4().hex
    data = {"variation": None, "query": QUERY, "variations": PRESETS[:VARIATIONS]}
    await add_event(run_id, "run_started", data)  # the run's stream begins
    running = asyncio.create_task(run(run_id, QUERY, VARIATIONS))
    async for entry_id, fields in follow(run_id):  # a reader: it knows no container
        if fields["event"] != "token":  # a token is a word; `final` has the whole answer
            print(f"{entry_id} {fields['event']:<17} {fields['data'][:56]}")
    await running


if __name__ == "__main__":
    asyncio.run(main())
