"""Worker creation slowed down, as on a loaded machine: a container exists (the engine lists it,
with its labels) well before `docker run` returns. Under load (load average 3.6 on 2 cores) 15 tests
once failed with `reason: 'the container disappeared'`: a warm worker listed while still being
created looked like a worker no run claims, the reaper removed it, and the variation that then
took it was declared gone. Docker sets a container's labels when it creates it; the stand-in for
Docker (ProcessWorkers, tests/support/variation_workers.py) now does so too, and the pool's
`starting` set covers the rest.
"""

import time

from support.waiting import wait_for
from tests.support.variations import by_variation, read_events, start_run


def slow_creation(workers, monkeypatch, seconds: float = 1.5) -> None:
    start = workers.start

    def slow(*args, **kwargs):
        worker_id = start(*args, **kwargs)  # it exists, and is listed, from here
        time.sleep(seconds)  # ...but the engine has not answered yet
        return worker_id

    monkeypatch.setattr(workers, "start", slow)


def test_workers_still_being_created_are_neither_removed_nor_declared_gone(
    serve, workers, monkeypatch
):
    slow_creation(workers, monkeypatch)
    # Each answer takes a few seconds, as a model's does: longer than the slow creation, so that
    # the cold worker is still running when `docker run` returns (with no delay it could finish
    # first, and its `container_started` would come after the run's end).
    server = serve(WARM_WORKERS=2, REAP_INTERVAL_SECONDS=0.05, OFFLINE_TOKEN_DELAY_MS=30)
    pool = server.server.config.app.state.orchestrator.pool
    wait_for(lambda: len(pool.idle) == 2, timeout=60, what="two warm workers")
    assert all(w.running for w in workers.list())  # none removed while being created
    run_id = start_run(server.url, variations=3)["run_id"]  # 2 warm, 1 cold and slow
    events = read_events(server.url, run_id, timeout=120)
    done = by_variation(events, "variation_done")
    assert [done[i]["status"] for i in range(3)] == ["succeeded"] * 3, done
    kinds = sorted(d["worker"] for d in by_variation(events, "container_started").values())
    assert kinds == ["cold", "warm", "warm"]
