"""The loop every replica runs: lease a run, continue it from its last checkpoint, let it go.

A run that needs a worker is a row in state `running` whose lease is free or expired. A replica
claims a few (FOR UPDATE SKIP LOCKED), keeps each lease alive while it works (a heartbeat), and
continues the run from LangGraph's last checkpoint: the first step of a new run, the step after a
person's decision, or the step a killed replica never finished. When the run waits for a person
the replica writes that down and drops the lease: no task, no thread, no connection is left.

Events are a projection of the checkpointed messages, each with a key of its own (the tool call's
id, the message's id): a step replayed after a crash writes the same keys, and the store keeps one.
"""

import asyncio
import contextlib
import logging
import uuid

import psycopg
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langgraph.types import Command
from psycopg_pool import PoolTimeout

from .store import RunEnded, RunStore

logger = logging.getLogger(__name__)

DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout)


def short(exc: BaseException) -> str:
    """One line for the log: a database outage is news once per retry, not a traceback."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


class DurableRuns:
    def __init__(
        self,
        store: RunStore,
        agent,
        *,
        replica: str | None = None,
        lease_seconds: float = 10.0,
        approval_timeout: float = 3600.0,
        poll_seconds: float = 0.5,
        max_running: int = 4,
    ):
        self.store, self.agent = store, agent
        self.replica = replica or uuid.uuid4().hex[:12]
        self.lease, self.approval_timeout = lease_seconds, approval_timeout
        self.poll, self.max_running = poll_seconds, max_running
        self.running: dict[str, asyncio.Task] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="durable-runs")

    def wake(self) -> None:
        """A run became claimable here (created, decided): look now, not at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop working: the leases run out and another replica (or this one, restarted) goes on."""
        tasks = [t for t in (self._loop_task, *self.running.values()) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # [start:loop]
    async def _loop(self) -> None:
        failures = 0
        while True:
            try:
                for run_id in await self.store.expire_waiting(self.approval_timeout):
                    logger.info("run %s expired: no decision in time", run_id)
                free = self.max_running - len(self.running)
                if free > 0:
                    for run_id in await self.store.claim(self.replica, self.lease, free):
                        self.running[run_id] = asyncio.create_task(self._work(run_id))
                if failures:
                    logger.info("database reachable again after %d failed tries", failures)
                failures = 0
            except DATABASE_ERRORS as exc:
                failures += 1
                logger.warning("database unavailable (try %d): %s", failures, short(exc))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll * min(2**failures, 10))
                # [end:loop]

    async def _work(self, run_id: str) -> None:
        me = asyncio.current_task()
        beat = asyncio.create_task(self._heartbeat(run_id, me))
        try:
            await self._continue(run_id)
        except DATABASE_ERRORS as exc:
            logger.warning("run %s paused, database unavailable: %s", run_id, short(exc))
        except asyncio.CancelledError:
            logger.info("run %s let go (lease lost or shutting down)", run_id)
        except RunEnded:  # cancelled as its sandbox was about to start: it never did
            logger.info("run %s let go (it ended: cancelled)", run_id)
        except Exception:
            logger.exception("run %s failed", run_id)
            with contextlib.suppress(*DATABASE_ERRORS):
                await self.store.add_event(run_id, "failed", "failed", {"message": "run failed"})
                await self.store.finish(run_id, self.replica, "failed", error="the run failed")
        finally:
            beat.cancel()
            self.running.pop(run_id, None)
            self.wake()  # a slot is free

    async def _heartbeat(self, run_id: str, work: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                if not await self.store.heartbeat(run_id, self.replica, self.lease):
                    work.cancel()  # another replica has it now: stop before writing anything
                    return
            except DATABASE_ERRORS:
                pass  # the run's own next write fails too, and says so

    # [start:continue]
    async def _continue(self, run_id: str) -> None:
        config = {"configurable": {"thread_id": run_id}}
        snapshot = await self.agent.aget_state(config)
        await self._project(run_id, snapshot.values.get("messages", []))
        if not snapshot.values:  # a new run: its first step
            run = await self.store.get(run_id)
            await self.store.add_event(run_id, "started", "run_started", {"query": run["query"]})
            inputs = {"messages": [HumanMessage(run["query"])]}
        elif snapshot.interrupts:  # it waited for a person: has one decided?
            pause = snapshot.interrupts[0]
            call_id = pause.value["tool_call_id"]
            decision = await self.store.decision(run_id, call_id)
            if decision is None:
                return await self._wait(run_id, pause)
            await self.store.add_event(
                run_id,
                f"decision:{call_id}",
                "decision",
                {"call_id": call_id, "decision": decision},
            )
            inputs = Command(resume={pause.id: decision})
        else:  # cut by a crash mid-step (or ended but not yet marked): go on from the checkpoint
            inputs = None
        if inputs is not None or snapshot.next:
            async for _ in self.agent.astream(
                inputs, config, stream_mode="updates", durability="sync"
            ):
                snapshot = await self.agent.aget_state(config)
                await self._project(run_id, snapshot.values.get("messages", []))
            snapshot = await self.agent.aget_state(config)
            await self._project(run_id, snapshot.values.get("messages", []))
            if snapshot.interrupts:
                return await self._wait(run_id, snapshot.interrupts[0])
        messages = snapshot.values.get("messages", [])
        answer = next((m.text for m in reversed(messages) if isinstance(m, AIMessage)), "").strip()
        await self.store.add_event(run_id, "answer", "answer", {"answer": answer})
        await self.store.add_event(run_id, "done", "done", {"state": "done"})
        await self.store.finish(run_id, self.replica, "done", answer=answer)
        # [end:continue]

    async def _wait(self, run_id: str, pause) -> None:
        value = pause.value
        pending = {"call_id": value["tool_call_id"], "tool": value["name"], "args": value["args"]}
        await self.store.add_event(
            run_id, f"approval:{pending['call_id']}", "approval_required", pending
        )
        await self.store.wait_for_approval(run_id, self.replica, pending)
        logger.info("run %s waits for approval of %s", run_id, pending["call_id"])

    async def _project(self, run_id: str, messages: list) -> None:
        for message in messages:
            if isinstance(message, AIMessage):
                for call in message.tool_calls:
                    data = {"call_id": call["id"], "tool": call["name"], "args": call["args"]}
                    await self.store.add_event(run_id, f"call:{call['id']}", "tool_call", data)
            elif isinstance(message, ToolMessage):
                data = {
                    "call_id": message.tool_call_id,
                    "status": message.status,
                    "content": message.text[:4000],
                }
                key = f"result:{message.tool_call_id}"
                await self.store.add_event(run_id, key, "tool_result", data)
