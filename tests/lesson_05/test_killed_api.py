"""An API killed without a word (`kill -9`) leaves no container behind (issue 26, item 9).

Its workers run on: each finishes its variation and exits. Nothing of the API is left to remove
them, and no API may ever start again, so the engine itself must: every worker is created with
`auto_remove` (code/lesson05/docker_workers.py). Needs real containers: `make variations-test`.
"""

import signal

import pytest

from support.waiting import wait_for
from tests.support.docker_cli import docker
from tests.support.variations import start_run

pytestmark = pytest.mark.container


def containers_of(run_id: str, *filters: str) -> list[str]:
    found = ("--filter", f"label=ai-course.run={run_id}", *filters)
    return docker("ps", "-aq", *found).split()


def test_the_workers_of_a_killed_api_leave_no_container_once_they_end(api_process):
    api = api_process(OFFLINE_TOKEN_DELAY_MS=60, VARIATION_TIMEOUT_SECONDS=60)
    run_id = start_run(api.url, variations=2)["run_id"]
    # Both started (a container the API created but never started has no process to end: it
    # stays `created` until an API's start-up sweep, see docs/05).
    running = ("--filter", "status=running")
    wait_for(lambda: len(containers_of(run_id, *running)) == 2, timeout=90, what="two workers")
    api.signal(signal.SIGKILL)
    assert api.wait(10) == -signal.SIGKILL  # no lifespan, no sweep: the API is gone
    # Each worker answers within seconds (offline model); its container must go with it. Before
    # `auto_remove`, both stayed `exited` until some API started again.
    wait_for(
        lambda: not containers_of(run_id, *running),
        timeout=90,
        what="both workers to end",
    )
    wait_for(lambda: not containers_of(run_id), timeout=15, what="their containers to be removed")
