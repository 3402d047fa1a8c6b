"""Lesson 07: the trace, every delivery and outcome as it happens (`make lesson-07-trace`, which
runs `python -m lesson07.event_agents trace`). The consumers write it (Bus.trace); this reads it."""

import time

from lesson07.contract import TRACE, Settings, connect


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
