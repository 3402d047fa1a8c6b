"""Lesson 05, step 5: every variation ends, with how: its exit code, or its run's deadline.

Run it:  make lesson-05 STEP=5   (builds the image, starts Redis on a Docker network of its own)
"""

import asyncio
import json
import os
import time
import uuid
from typing import Annotated

import redis.asyncio as redis
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException, Path
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from lesson05.container import PRESETS, client, start
from research_agent import EXIT_REASONS, WORKER_EVENTS, events_key, worker_events_key

REDIS_URL = os.environ["REDIS_URL"]  # Redis for this script, allowed every key (make sets it)
r = redis.Redis.from_url(REDIS_URL, decode_responses=True)  # asyncio: awaited, never blocks
REASONS = {**EXIT_REASONS, 137: "killed (SIGKILL): out of memory or stopped from outside"}


async def variation(run_id: str, index: int, query: str) -> None:
    """Start a variation's container, in a thread: the SDK blocks."""
    container = await asyncio.to_thread(start, run_id, index, query)
    data = {"variation": index, "container": container.short_id}
    await add_event(run_id, "container_started", data)


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


async def reap(run_id: str, streams: dict[str, str], ended: set[int], deadline: float) -> None:
    """A look at the run's containers, found by its label: end each variation whose worker has
    exited, with its exit code, or that is past the deadline; remove its container."""
    label = {"label": f"ai-course.run={run_id}"}
    listed = await asyncio.to_thread(client.containers.list, all=True, filters=label)
    containers = {int(c.labels["ai-course.variation"]): c for c in listed}
    for index in set(range(len(streams))) - ended:
        container = containers.get(index)
        if container is None:  # it did not start, or someone removed it
            done = {"status": "failed", "reason": "no container: it did not start, or was removed"}
        elif container.status == "exited":
            await relay(run_id, streams, None)  # its last events, before its variation_done
            state = container.attrs["State"]  # what the engine recorded
            code, oom = state["ExitCode"], state["OOMKilled"]
            reason = "out of memory: killed at the 512m limit" if oom else REASONS.get(code)
            status = "succeeded" if code == 0 else "failed"
            done = {"status": status, "exit_code": code, "oom_killed": oom, "reason": reason}
        elif time.time() > deadline:
            done = {"status": "timed_out", "reason": "no answer in time: the container was killed"}
        else:
            continue
        if container is not None:
            await asyncio.to_thread(container.remove, force=True)  # killed first if it runs
        await add_event(run_id, "variation_done", {"variation": index, **done})
        ended.add(index)


async def run(run_id: str, query: str, count: int, timeout: float) -> None:
    """The run's variations at once, their events relayed until all have ended; then run_done."""
    deadline = time.time() + timeout  # every variation's: nothing waits for ever
    starts = (variation(run_id, i, query) for i in range(count))
    await asyncio.gather(*starts, return_exceptions=True)  # all at once; one may fail to start
    streams = {worker_events_key(run_id, i): "0-0" for i in range(count)}
    ended: set[int] = set()
    while len(ended) < count:  # four times a second: relay, then look at the containers
        await relay(run_id, streams, 250)
        await reap(run_id, streams, ended, deadline)
    await add_event(run_id, "run_done", {"variation": None, "status": "done"})


async def follow(run_id: str, last_id: str = "0-0"):
    """The run's events after `last_id` (0-0: all), with their ids, as they come, to run_done."""
    key = events_key(run_id)
    while True:
        # Asked first: once run_done is written, all is, and a read that finds nothing is the end.
        ended = (await r.xrevrange(key, count=1))[0][1]["event"] == "run_done"
        found = await r.xread({key: last_id}, block=None if ended else 1000)  # up to 1 s for more
        for _, entries in found:
            for entry_id, fields in entries:
                last_id = entry_id  # the next read starts after it
                yield entry_id, fields
                if fields["event"] == "run_done":
                    return
        if not found and ended:
            return  # resumed after run_done: nothing more will come


class RunRequest(BaseModel):
    query: str = Field(min_length=3, max_length=2000)
    variations: int = Field(3, ge=1, le=len(PRESETS))
    timeout_seconds: float = Field(120, gt=0, le=120)  # from the run's start to its kill


app = FastAPI(title="Parallel variations, step 5")
running: set[asyncio.Task] = set()  # the runs going (a task nothing holds may be collected)


@app.post("/v1/runs", status_code=202)
async def create_run(body: RunRequest) -> dict:
    """Start a run: its events are at /v1/runs/{run_id}/events."""
    run_id = uuid.uuid4().hex
    data = {"variation": None, "query": body.query, "variations": PRESETS[: body.variations]}
    await add_event(run_id, "run_started", data)  # the run's stream begins
    task = asyncio.create_task(run(run_id, body.query, body.variations, body.timeout_seconds))
    running.add(task)
    task.add_done_callback(running.discard)
    return {"run_id": run_id}


async def existing_run(run_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]) -> str:
    """Checked before the stream starts: an unknown run is a 404, not a stream that never ends."""
    if not await r.exists(events_key(run_id)):
        raise HTTPException(404, f"no run {run_id}")
    return run_id


@app.get("/v1/runs/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    run_id: Annotated[str, Depends(existing_run)],
    last_event_id: Annotated[str, Header(pattern=r"^\d{1,20}-\d{1,20}$")] = "0-0",
):
    """Server-sent events: the run's after Last-Event-ID (none: all), each with its stream id."""
    async for entry_id, fields in follow(run_id, last_event_id):
        yield ServerSentEvent(id=entry_id, event=fields["event"], raw_data=fields["data"])


if __name__ == "__main__":
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
