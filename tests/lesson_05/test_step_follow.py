"""Steps 4 and 5's `follow` ends with run_done, however the run's last event and its read meet.

A read that waits its second and finds nothing, then run_done written at once, before the reader
looks at the stream's newest entry: the reader must still hand on run_done, not stop one short of
it (a client's stream then ends with no run_done: seen under load in `make variations-test`). And a
client resuming at run_done, or at an id past it, is answered at once with nothing more.
"""

import asyncio
import json

import pytest

from research_agent import events_key
from support.lessons import import_lesson

STEPS = ["lesson05.step4_api", "lesson05.step5_lifecycle"]


def event(name: str) -> dict:
    return {"event": name, "data": json.dumps({"variation": None})}


@pytest.mark.parametrize("step", STEPS)
def test_run_done_written_just_after_an_empty_read_is_still_handed_on(step, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("WORKER_REDIS_URL", redis_url)  # read at import; no worker starts here
    module = import_lesson(step)
    r, key = module.r, events_key("a" * 32)
    real_xread, late = r.xread, []

    async def xread(streams, **kwargs):
        found = await real_xread(streams, **kwargs)
        if not found and not late:  # the run ends right after this read gave up
            late.append(await r.xadd(key, event("run_done")))
        return found

    monkeypatch.setattr(r, "xread", xread)

    async def scenario():
        first = await r.xadd(key, event("run_started"))
        names = [(i, f["event"]) async for i, f in module.follow("a" * 32)]
        assert names == [(first, "run_started"), (late[0], "run_done")]
        # Resumed at run_done, or past it: nothing more, at once.
        for resume in (late[0], "99999999999999-0"):
            assert [i async for i, _ in module.follow("a" * 32, resume)] == []
        await r.aclose()

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
