"""The runner's waiting list, without Docker: `run` is replaced by a stand-in that holds a slot
until the test lets it go, so what is asserted is who ran and who was refused, never how long."""

import asyncio
import threading

import pytest

from research_agent.sandbox.admission import (
    QueuedRunner,
    RunAbandoned,
    SandboxBusy,
    SandboxShuttingDown,
)
from research_agent.sandbox.runner import SandboxConfig, SandboxRunner


class HeldSandbox(SandboxRunner):
    """Every run waits for `release` and records its code: no container, no clock."""

    def __init__(self, **config):
        super().__init__(SandboxConfig(**config), client=object())
        self.release = threading.Event()
        self.ran: list[str] = []

    def run(self, code, timeout_seconds=None, request_id="-"):
        self.ran.append(code)
        self.release.wait(30)
        return code


def held_runner(**config) -> QueuedRunner:
    """The admission in front of a HeldSandbox (its `runner`)."""
    return QueuedRunner(HeldSandbox(**config))


async def settle():
    for _ in range(20):  # let every started task reach its await
        await asyncio.sleep(0)


async def gone() -> bool:
    return True


def test_a_full_waiting_list_refuses_the_next_run_at_once():
    async def scenario(runner):
        held = [asyncio.create_task(runner.arun(f"run {i}")) for i in range(3)]  # 1 runs, 2 wait
        await settle()
        with pytest.raises(SandboxBusy) as refused:
            await runner.arun("one too many")
        assert not refused.value.per_caller
        runner.runner.release.set()
        return await asyncio.gather(*held)

    runner = held_runner(max_concurrent=1, max_queued=2)
    assert asyncio.run(scenario(runner)) == ["run 0", "run 1", "run 2"]
    assert "one too many" not in runner.runner.ran


def test_forty_abandoned_runs_never_start_and_do_not_delay_the_next():
    # 40 clients sent a long program and hung up while it waited: none of them may run.
    async def scenario(runner):
        first = asyncio.create_task(runner.arun("running"))
        await settle()
        abandoned = [
            asyncio.create_task(runner.arun(f"abandoned {i}", abandoned=gone)) for i in range(40)
        ]
        await settle()
        fresh = asyncio.create_task(runner.arun("fresh"))
        await settle()
        runner.runner.release.set()
        results = await asyncio.gather(*abandoned, return_exceptions=True)
        assert all(isinstance(r, RunAbandoned) for r in results)
        return await first, await fresh

    runner = held_runner(max_concurrent=1, max_queued=64)
    assert asyncio.run(scenario(runner)) == ("running", "fresh")
    assert runner.runner.ran == ["running", "fresh"]


def test_one_caller_cannot_take_every_slot():
    async def scenario(runner):
        mine = [asyncio.create_task(runner.arun(f"a{i}", caller="10.0.0.1")) for i in range(2)]
        await settle()
        with pytest.raises(SandboxBusy) as refused:
            await runner.arun("a2", caller="10.0.0.1")
        assert refused.value.per_caller
        other = asyncio.create_task(runner.arun("b0", caller="10.0.0.2"))
        await settle()
        runner.runner.release.set()
        await asyncio.gather(*mine, other)
        # Finished runs give the caller its share back.
        return await runner.arun("a3", caller="10.0.0.1")

    runner = held_runner(max_concurrent=4, max_queued=8, max_per_caller=2)
    assert asyncio.run(scenario(runner)) == "a3"


def test_on_shutdown_waiting_runs_are_refused_and_the_running_one_finishes():
    async def scenario(runner):
        first = asyncio.create_task(runner.arun("running"))
        await settle()
        waiting = [asyncio.create_task(runner.arun(f"waiting {i}")) for i in range(3)]
        await settle()
        runner.begin_shutdown()
        refused = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(r, SandboxShuttingDown) for r in refused), refused
        with pytest.raises(SandboxShuttingDown):
            await runner.arun("after SIGTERM")
        runner.runner.release.set()
        return await first

    runner = held_runner(max_concurrent=1, max_queued=8)
    assert asyncio.run(scenario(runner)) == "running"
    assert runner.runner.ran == ["running"]


def test_a_caller_cancelled_while_waiting_is_cancelled_not_refused():
    async def scenario(runner):
        first = asyncio.create_task(runner.arun("running"))
        await settle()
        waiting = asyncio.create_task(runner.arun("waiting", caller="a"))
        await settle()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        runner.runner.release.set()
        await first
        return dict(runner._per_caller.held), runner._waiting

    assert asyncio.run(scenario(held_runner(max_concurrent=1))) == ({}, 0)
