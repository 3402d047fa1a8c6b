"""A cancel reaches a run's sandbox whenever the engine starts it, and nothing of it is left.

Before: the tool ran the sandbox in a thread (asyncio.to_thread) that the heartbeat's cancel of the
run's task cannot stop; DELETE looked for the run's containers at once and LEASE_SECONDS later. On a
slow engine the thread made the container after both looks, started it, ran the cancelled run's
code, and kept the container (AutoRemove off) for good: lesson 10 had no sweep.
"""

import asyncio
import time
import uuid

from research_agent import KeyedSandbox, RunStore, SandboxConfig, SandboxRunner, make_pool, migrate
from research_agent.durable.idempotent import idempotency_key
from support.waiting import wait_for
from tests.lesson_10.conftest import OWNER, SANDBOX_IMAGE, start_run, wait_state
from tests.lesson_10.test_durable_api import decide
from tests.support.slow_docker import SlowDocker

LEASE_SECONDS = 2  # what tests/lesson_10/conftest.py gives every replica


def test_a_cancel_reaches_a_sandbox_the_engine_makes_late(api_factory, engine, sandbox_starts):
    slow = SlowDocker()
    try:
        api = api_factory(DOCKER_HOST=slow.url).start()
        starts = sandbox_starts()
        run_id, token = start_run(api)
        pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
        approve = {"call_id": pending["call_id"], "decision": "approve"}
        assert decide(api, run_id, token, **approve).status_code == 202
        assert slow.held.wait(120), f"the sandbox's create never came: {slow.requests}"
        with api.client(token) as c:
            assert c.delete(f"/v1/runs/{run_id}").status_code == 200
        wait_for(lambda: f"run {run_id} let go" in api.logs(), timeout=60, what="the worker let go")
        # The engine answers the create later than any look DELETE takes within the lease.
        time.sleep(LEASE_SECONDS + 1)
        slow.release_and_expect_removed(engine, starts, run_id)
    finally:
        slow.close()


def test_the_sweep_removes_the_kept_sandboxes_of_ended_runs_only(agent_dsn, engine):
    """A kept sandbox nobody will read (its run ended: a call whose Docker calls failed, a thread
    that went on after its run was let go) is removed; a run still going keeps its own."""
    ended, going = uuid.uuid4().hex, uuid.uuid4().hex

    async def scenario() -> tuple[int, dict]:
        pool = make_pool(agent_dsn)
        await pool.open(wait=True, timeout=60)
        try:
            await migrate(pool)
            store = RunStore(pool)
            for run_id in (ended, going):
                await store.create(run_id, "owner-hash", "test", "What is 2**100?", 10, 10)
            await store.cancel(ended)
            sandbox = KeyedSandbox(SandboxRunner(SandboxConfig(image=SANDBOX_IMAGE, owner=OWNER)))
            made = {}
            for run_id in (ended, going):
                name = f"agent-sandbox-{idempotency_key(run_id, 'call_1')}"
                spec = sandbox.kept(name, 5, run_id, sandbox.runner.take_uid())
                made[run_id] = await asyncio.to_thread(sandbox.runner.create_from, spec)
            return await sandbox.sweep_ended(store), made
        finally:
            await pool.close()

    removed, made = asyncio.run(scenario())
    assert removed == 1
    mine = {"label": f"agent-sandbox.owner={OWNER}"}
    left = {c.id for c in engine.containers.list(all=True, sparse=True, filters=mine)}
    assert made[ended].id not in left and made[going].id in left
    made[going].remove(force=True)
