"""A cancel reaches a task's sandbox whenever the engine makes it (lesson 10's race, on A2A tasks):
one replica of code/lesson12/a2a_server.py on a real PostgreSQL, whose Docker Engine holds the
sandbox's
create until the test lets it go (tests/support/slow_docker.py). Needs Docker and PostgreSQL: part
of `make a2a-test` (marker `container`).

Before: CancelTask ended the task's work row and looked for its sandboxes once; the tool's thread,
which goes on after the task's run is cancelled, asked lesson 10's run store whether the run had
ended, and a task has no run there: never. So a sandbox the engine made after that look was
started, and the cancelled task's code ran.
"""

import threading
import time

import pytest

from tests.lesson_12.conftest import Replicas, ask_to_wait
from tests.support.a2a import A2A, pending, run, state, user_data
from tests.support.slow_docker import SlowDocker

pytestmark = pytest.mark.container


def test_a_cancel_reaches_a_sandbox_the_engine_makes_late(
    postgres_dsn, tokens, engine, sandbox_starts, tmp_path
):
    slow = SlowDocker()
    replica = Replicas(postgres_dsn, tmp_path, tokens["_file"], DOCKER_HOST=slow.url)
    try:
        replica.start(0)
        starts = sandbox_starts()
        task = ask_to_wait(replica, tokens)
        call_id = pending(task)["call_id"]
        client = A2A(replica.url(0), tokens["planner"])
        approve = user_data(
            {"call_id": call_id, "decision": "approve"}, task_id=task.id, context_id=task.context_id
        )
        # The approval's stream waits on the sandbox the engine holds: it goes on in a thread.
        decided = threading.Thread(target=lambda: run(client.send(approve)), daemon=True)
        decided.start()
        assert slow.held.wait(120), f"the sandbox's create never came: {slow.requests}"
        assert state(run(client.cancel(task.id)).status.state) == "canceled"
        time.sleep(2)  # the engine answers the create later than the cancel's look
        slow.release_and_expect_removed(engine, starts, task.id)
        assert state(run(client.get(task.id)).status.state) == "canceled"
    finally:
        slow.close()
        replica.stop()
