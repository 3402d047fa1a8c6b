"""Lesson 05's background loops (the reaper and the relay) end at shutdown even when the
cancellation sent to them is lost on the way, as Python 3.11's asyncio.wait_for can lose it inside
a Redis client's timeout. Under load a test server once went on reaping for 60 s after its
shutdown began; in production that is a stop that waits for SIGKILL."""

import asyncio

import pytest
import redis.asyncio as redis

from lesson05.redis_access import Backoff, forever, relay_forever


class SwallowsOneCancel:
    """A step that turns the first cancellation it receives into a Redis timeout, as the race
    does, and otherwise takes a little time like a real pass."""

    def __init__(self):
        self.swallowed = 0
        self.inside = asyncio.Event()  # set while a step is under way

    async def __call__(self, *args, **kwargs):
        self.inside.set()
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if self.swallowed:
                raise
            self.swallowed += 1
            raise redis.TimeoutError("the cancellation, lost") from None
        finally:
            self.inside.clear()
        return {}


async def stop(task: asyncio.Task, stopping: asyncio.Event) -> None:
    stopping.set()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done, "the loop went on after its shutdown began"


@pytest.mark.parametrize("loop", ["reaper", "relay"])
def test_a_loop_whose_cancellation_is_lost_still_ends_at_shutdown(loop):
    async def main():
        step, stopping = SwallowsOneCancel(), asyncio.Event()
        if loop == "reaper":
            task = asyncio.create_task(forever("a reaper pass", 0.01, step, stopping))
        else:

            class Relay:
                targets = step
                pump = step

            task = asyncio.create_task(relay_forever(Relay(), step, stopping))
        await step.inside.wait()  # cancelled inside a step, where the cancellation is lost
        await stop(task, stopping)
        return step.swallowed

    assert asyncio.run(main()) == 1


def test_a_failing_loop_waits_twice_as_long_each_time_up_to_its_cap_with_a_line_each(caplog):
    backoff = Backoff("a reaper pass", 0.25, cap=2.0)
    waits = [backoff.failed(redis.ConnectionError("down")) for _ in range(6)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff.ok() == 0.25 and backoff.failed(redis.ConnectionError("down")) == 0.25
    lines = [r.getMessage() for r in caplog.records if r.name == "variations"]
    assert len(lines) == 7 and lines[0].startswith("a reaper pass failed (retrying in 0.2 s)")
