"""Who works on which A2A task: lesson 10's lease, on the task instead of on a run.

The SDK keeps each task (its status, history, artifacts and events) in PostgreSQL, but the agent
runs in the process that received the message: killed, nobody would go on. So every task that
is working has a row here, leased to the replica working on it and renewed while it works. A
replica whose lease ran out is gone; any other claims the task (FOR UPDATE SKIP LOCKED, as lesson
10's runs) and goes on from the agent's last checkpoint. A task waiting for input has a row with
no lease and the call it waits on; the caller's decision is written into that row with a lease,
in one statement, so that of two decisions racing on two replicas exactly one is taken. A task
that finished or was cancelled has no row: run_python asks before it starts a sandbox.
"""

import uuid
from datetime import timedelta

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from research_agent import RunStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS a2a_work (
    task_id        text PRIMARY KEY,
    owner          text NOT NULL,
    context_id     text NOT NULL,
    replica        text,
    lease_expires  timestamptz,
    waiting_call   text,
    decision       jsonb
);
CREATE INDEX IF NOT EXISTS a2a_work_claimable ON a2a_work (lease_expires)
    WHERE lease_expires IS NOT NULL
"""


class WorkStore:
    def __init__(self, pool: AsyncConnectionPool, replica: str, lease_seconds: float):
        self.pool, self.replica = pool, replica
        self.lease = timedelta(seconds=lease_seconds)

    async def _one(self, query: str, params: tuple) -> dict | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone() if cursor.description else None

    async def migrate(self) -> None:
        for statement in SCHEMA.split(";"):
            await self._one(statement, ())

    async def reserve(self, owner: str, most: int) -> str | None:
        """A row for a task the caller is about to start, counted with its others, or None when it
        has `most` already. Counted and written under a lock per caller, in one transaction: of
        many messages at once, no more than `most` get a row. The executor's `start` makes it the
        task's; one never taken lapses with its lease, and Recovery removes it."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (owner,))
            cursor = await conn.execute(
                "SELECT count(*) AS n FROM a2a_work WHERE owner = %s", (owner,)
            )
            if (await cursor.fetchone())["n"] >= most:
                return None
            slot = f"slot-{uuid.uuid4()}"
            await conn.execute(
                "INSERT INTO a2a_work (task_id, owner, context_id, replica, lease_expires)"
                " VALUES (%s, %s, '', %s, now() + %s)",
                (slot, owner, self.replica, self.lease),
            )
            return slot

    async def start(self, task_id: str, owner: str, context_id: str, slot: str = "") -> bool:
        """A new task, leased to this replica, in the row reserved for it (or a new one). False:
        the id is taken."""
        if slot:
            row = await self._one(
                "UPDATE a2a_work SET task_id = %s, context_id = %s, replica = %s,"
                " lease_expires = now() + %s WHERE task_id = %s AND owner = %s RETURNING task_id",
                (task_id, context_id, self.replica, self.lease, slot, owner),
            )
            if row is not None:
                return True
        row = await self._one(
            "INSERT INTO a2a_work (task_id, owner, context_id, replica, lease_expires)"
            " VALUES (%s, %s, %s, %s, now() + %s) ON CONFLICT DO NOTHING RETURNING task_id",
            (task_id, owner, context_id, self.replica, self.lease),
        )
        return row is not None

    async def decide(self, task_id: str, owner: str, call_id: str, decision: dict) -> bool:
        """The decision on the call the task waits for, and the lease to act on it, at once.
        False: the task does not wait on that call (decided already, or never asked)."""
        row = await self._one(
            "UPDATE a2a_work SET decision = %s, waiting_call = NULL, replica = %s,"
            " lease_expires = now() + %s WHERE task_id = %s AND owner = %s"
            " AND waiting_call = %s AND lease_expires IS NULL RETURNING task_id",
            (Jsonb(decision), self.replica, self.lease, task_id, owner, call_id),
        )
        return row is not None

    async def decision(self, task_id: str) -> dict | None:
        row = await self._one("SELECT decision FROM a2a_work WHERE task_id = %s", (task_id,))
        return row["decision"] if row else None

    async def heartbeat(self, task_id: str) -> bool:
        """Renew our lease; False when it is not ours any more (it ran out, another took it)."""
        row = await self._one(
            "UPDATE a2a_work SET lease_expires = now() + %s"
            " WHERE task_id = %s AND replica = %s AND lease_expires IS NOT NULL RETURNING task_id",
            (self.lease, task_id, self.replica),
        )
        return row is not None

    async def wait_for(self, task_id: str, call_id: str) -> None:
        """The task waits for a person: no lease, nobody works on it, the call it waits on."""
        await self._one(
            "UPDATE a2a_work SET replica = NULL, lease_expires = NULL, decision = NULL,"
            " waiting_call = %s WHERE task_id = %s AND replica = %s",
            (call_id, task_id, self.replica),
        )

    async def finish(self, task_id: str) -> None:
        await self._one("DELETE FROM a2a_work WHERE task_id = %s", (task_id,))

    async def ended(self, task_id: str) -> bool:
        """No row: the task finished, or was cancelled (a cancel deletes it before it looks for
        the task's sandboxes)."""
        row = await self._one("SELECT 1 AS found FROM a2a_work WHERE task_id = %s", (task_id,))
        return row is None

    async def claim_orphans(self, limit: int) -> list[dict]:
        """Tasks whose replica stopped renewing its lease: leased to this one now."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                UPDATE a2a_work SET replica = %s, lease_expires = now() + %s
                WHERE task_id IN (
                    SELECT task_id FROM a2a_work WHERE lease_expires < now()
                    ORDER BY lease_expires LIMIT %s FOR UPDATE SKIP LOCKED
                ) RETURNING task_id, owner, context_id
                """,
                (self.replica, self.lease, limit),
            )
            return await cursor.fetchall()

    async def active(self, owner: str) -> int:
        row = await self._one("SELECT count(*) AS n FROM a2a_work WHERE owner = %s", (owner,))
        return row["n"]


class TaskResults(RunStore):
    """Lesson 10's store of tool results, for A2A tasks. run_python asks it whether the task has
    ended once the sandbox exists and before it starts it: a task ends with its work row, which
    CancelTask deletes before it removes the task's sandboxes, so whichever comes second sees
    the first (lesson 10's cancel, research_agent/durable/idempotent.py)."""

    def __init__(self, pool: AsyncConnectionPool, work: WorkStore):
        super().__init__(pool)
        self.work = work

    async def ended(self, run_id: str) -> bool:
        return await self.work.ended(run_id)
