"""The rows a durable run is made of, next to LangGraph's checkpoints in the same database.

runs          one row per run: owner (a token's hash), state, the pending call, the answer, and its
              lease (which replica works on it, until when); a cancelled run ends at once
events        the run's event stream, numbered 1, 2, 3...; a unique key per event, so writing the
              same event twice (a step replayed after a crash) keeps one. Each event written is
              announced with NOTIFY on CHANNEL, heard when it commits (streams.py listens)
decisions     a person's decision per (run, call): the primary key makes the second of two racing
              decisions fail, whichever replica it reached
tool_results  a side effect's result by its idempotency key, written before the step completes

Every value reaches SQL as a parameter, never pasted into the text. The migrations (ours and the
checkpointer's) run once, by whichever replica takes an advisory lock first; the others wait for
it by polling `pg_try_advisory_lock`, never blocking in the database.
"""

import asyncio
import logging
from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

# Any fixed number: the key of the advisory lock that serializes migrations.
MIGRATION_LOCK = 1010_2026
ACTIVE = ("running", "waiting_for_approval")
ENDED = ("done", "failed", "expired", "cancelled")
END_EVENTS = ("done", "failed", "approval_expired", "cancelled")  # a run's last event is one
CHANNEL = "run_events"  # NOTIFY '<run id>' for each event written (streams.py listens)

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id              text PRIMARY KEY,
    owner_hash      text NOT NULL,
    caller          text NOT NULL,
    query           text NOT NULL,
    state           text NOT NULL DEFAULT 'running',
    pending         jsonb,
    answer          text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    waiting_since   timestamptz,
    lease_owner     text,
    lease_expires   timestamptz
);
-- Its states, by name (a database made before 'cancelled' existed gets the new list).
ALTER TABLE runs DROP CONSTRAINT IF EXISTS runs_state_check;
ALTER TABLE runs ADD CONSTRAINT runs_state_check CHECK (state IN
    ('running', 'waiting_for_approval', 'done', 'failed', 'expired', 'cancelled'));
CREATE INDEX IF NOT EXISTS runs_claimable ON runs (lease_expires) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS runs_owner ON runs (owner_hash, state);
CREATE INDEX IF NOT EXISTS runs_active ON runs (state)
    WHERE state IN ('running', 'waiting_for_approval');
CREATE TABLE IF NOT EXISTS events (
    run_id  text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq     integer NOT NULL,
    key     text NOT NULL,
    type    text NOT NULL,
    data    jsonb NOT NULL,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, key)
);
CREATE TABLE IF NOT EXISTS decisions (
    run_id      text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id     text NOT NULL,
    decision    jsonb NOT NULL,
    decided_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, call_id)
);
CREATE TABLE IF NOT EXISTS tool_results (
    key          text PRIMARY KEY,
    run_id       text NOT NULL,
    call_id      text NOT NULL,
    result       jsonb NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
"""

POOL_KWARGS = {"autocommit": True, "prepare_threshold": 0}  # and row_factory=dict_row (below)


def make_pool(dsn: str, max_size: int = 5) -> AsyncConnectionPool:
    """A pool the checkpointer can use too: autocommit, no prepared statements (they break
    behind a pooler and after a server restart), rows as dicts. A connection is checked before
    it is handed out, so a restarted server costs one failed check, not a failed step."""
    from psycopg.rows import dict_row

    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        kwargs={**POOL_KWARGS, "row_factory": dict_row},
        check=AsyncConnectionPool.check_connection,
        # A request waits this long for a connection, then fails (503): a database that is
        # restarting makes answers quick refusals, not 30-second hangs.
        timeout=5,
        open=False,
        reconnect_timeout=3600,
    )


async def migrate(pool: AsyncConnectionPool, *more, wait_seconds: float = 120) -> None:
    """Create our tables and run `more` (the checkpointer's setup), once across replicas."""
    async with pool.connection() as conn:
        for _ in range(int(wait_seconds / 0.2)):
            row = await (
                await conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (MIGRATION_LOCK,))
            ).fetchone()
            if row["got"]:
                break
            await asyncio.sleep(0.2)  # another replica is migrating: poll, never block
        else:
            raise TimeoutError(f"another replica held the migration lock for {wait_seconds} s")
        try:
            for statement in filter(str.strip, SCHEMA.split(";")):
                await conn.execute(statement)
            for step in more:
                await step()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class Conflict(Exception):
    """The row says no: the call is not pending, or a decision for it exists already."""


class RunEnded(Exception):
    """The run ended (its owner cancelled it) while a replica was working on it: the work stops
    there, and nothing it was about to start is started."""


class RunStore:
    def __init__(self, pool: AsyncConnectionPool):
        self.pool = pool

    async def _one(self, query: str, params: tuple = ()) -> dict | None:
        async with self.pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchone()

    async def _all(self, query: str, params: tuple = ()) -> list[dict]:
        async with self.pool.connection() as conn:
            return await (await conn.execute(query, params)).fetchall()

    async def ping(self) -> None:
        await self._one("SELECT 1")

    # --- runs ---------------------------------------------------------------------------------

    async def create(
        self, run_id: str, owner_hash: str, caller: str, query: str, cap: int, total_cap: int
    ) -> tuple[int, int]:
        """Insert a run unless its owner has `cap` active ones, or all owners together have
        `total_cap`: returns (the owner's, everyone's) active runs before it (the run exists only
        if both were below their caps). One owner's creations are serialized by an advisory lock
        on the owner, so two at once cannot both slip under its cap; the total may pass its cap
        by the creations of other owners at the same moment. `caller` (the address the edge
        reported) is kept for the record only: behind one published port every client has one."""
        async with self.pool.connection() as conn, conn.transaction():
            lock = "owner:" + owner_hash
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            counts = await (
                await conn.execute(
                    "SELECT count(*) FILTER (WHERE owner_hash = %s) AS mine, count(*) AS everyone"
                    " FROM runs WHERE state = ANY(%s)",
                    (owner_hash, list(ACTIVE)),
                )
            ).fetchone()
            if counts["mine"] < cap and counts["everyone"] < total_cap:
                await conn.execute(
                    "INSERT INTO runs (id, owner_hash, caller, query, lease_expires)"
                    " VALUES (%s, %s, %s, %s, now())",
                    (run_id, owner_hash, caller, query),
                )
            return counts["mine"], counts["everyone"]

    async def get(self, run_id: str) -> dict | None:
        return await self._one("SELECT * FROM runs WHERE id = %s", (run_id,))

    async def ended(self, run_id: str) -> bool:
        """Whether the run has ended (cancelled, done, ...); a run with no row has not (a caller
        that keeps only tool results here, lesson 12's tasks, has none)."""
        row = await self._one("SELECT state FROM runs WHERE id = %s", (run_id,))
        return row is not None and row["state"] in ENDED

    async def ended_of(self, run_ids: list[str]) -> set[str]:
        """Which of these runs have ended."""
        rows = await self._all(
            "SELECT id FROM runs WHERE id = ANY(%s) AND state = ANY(%s)", (run_ids, list(ENDED))
        )
        return {row["id"] for row in rows}

    async def waiting_for(self, owner_hash: str) -> list[dict]:
        return await self._all(
            "SELECT id, query, pending, waiting_since FROM runs"
            " WHERE owner_hash = %s AND state = 'waiting_for_approval' ORDER BY created_at",
            (owner_hash,),
        )

    # --- leases: one replica works on a run at a time ------------------------------------------

    async def claim(self, replica: str, lease: float, limit: int) -> list[str]:
        """Runs that need a worker (state running, lease free or expired): leased to `replica`.
        SKIP LOCKED: two replicas claiming at once take different runs, neither waits."""
        rows = await self._all(
            """
            UPDATE runs SET lease_owner = %s, lease_expires = now() + %s
            WHERE id IN (
                SELECT id FROM runs
                WHERE state = 'running' AND (lease_expires IS NULL OR lease_expires < now())
                ORDER BY lease_expires NULLS FIRST LIMIT %s
                FOR UPDATE SKIP LOCKED
            ) RETURNING id
            """,
            (replica, timedelta(seconds=lease), limit),
        )
        return [row["id"] for row in rows]

    async def heartbeat(self, run_id: str, replica: str, lease: float) -> bool:
        """Extend our lease; False if it is no longer ours (it expired and another took it)."""
        row = await self._one(
            "UPDATE runs SET lease_expires = now() + %s"
            " WHERE id = %s AND lease_owner = %s AND state = 'running' RETURNING id",
            (timedelta(seconds=lease), run_id, replica),
        )
        return row is not None

    async def wait_for_approval(self, run_id: str, replica: str, pending: dict) -> None:
        """The run waits for a person: no lease, no worker; only this row remembers it."""
        await self._one(
            "UPDATE runs SET state = 'waiting_for_approval', pending = %s, waiting_since = now(),"
            " lease_owner = NULL, lease_expires = NULL WHERE id = %s AND lease_owner = %s"
            " RETURNING id",
            (Jsonb(pending), run_id, replica),
        )

    async def finish(self, run_id: str, replica: str, state: str, answer=None, error=None) -> bool:
        row = await self._one(
            "UPDATE runs SET state = %s, answer = %s, error = %s, pending = NULL,"
            " lease_owner = NULL, lease_expires = NULL"
            " WHERE id = %s AND lease_owner = %s AND state = 'running' RETURNING id",
            (state, answer, error, run_id, replica),
        )
        return row is not None

    async def expire_waiting(self, older_than: float) -> list[str]:
        """Runs nobody decided on in time: ended, with an event saying so."""
        async with self.pool.connection() as conn, conn.transaction():
            rows = await (
                await conn.execute(
                    "UPDATE runs SET state = 'expired', pending = NULL"
                    " WHERE state = 'waiting_for_approval' AND waiting_since < now() - %s"
                    " RETURNING id",
                    (timedelta(seconds=older_than),),
                )
            ).fetchall()
            for row in rows:
                message = f"no decision within {older_than:g} s: the run ended"
                await self._add_event(conn, row["id"], "expired", "approval_expired",
                                      {"message": message})  # fmt: skip
        return [row["id"] for row in rows]

    async def cancel(self, run_id: str) -> bool:
        """End a running or waiting run at its owner's word, with an event saying so; False if it
        had ended already. A replica working on it loses its lease at its next heartbeat (the
        state is no longer `running`) and writes nothing more (add_event, finish)."""
        async with self.pool.connection() as conn, conn.transaction():
            row = await (
                await conn.execute(
                    "UPDATE runs SET state = 'cancelled', pending = NULL, waiting_since = NULL,"
                    " lease_owner = NULL, lease_expires = NULL"
                    " WHERE id = %s AND state = ANY(%s) RETURNING id",
                    (run_id, list(ACTIVE)),
                )
            ).fetchone()
            if row is not None:
                await self._add_event(conn, run_id, "cancelled", "cancelled",
                                      {"message": "cancelled by its owner"})  # fmt: skip
        return row is not None

    # --- decisions ----------------------------------------------------------------------------

    async def decide(self, run_id: str, call_id: str, decision: dict) -> None:
        """Record a decision for the pending call and hand the run back to the workers. Raises
        Conflict when that call is not pending, or someone decided first (on any replica)."""
        async with self.pool.connection() as conn, conn.transaction():
            run = await (
                await conn.execute(
                    "SELECT state, pending FROM runs WHERE id = %s FOR UPDATE", (run_id,)
                )
            ).fetchone()
            if not run or run["state"] != "waiting_for_approval":
                raise Conflict("the run is not waiting for a decision")
            if (run["pending"] or {}).get("call_id") != call_id:
                raise Conflict("that call is not pending (decided already, or never asked)")
            inserted = await (
                await conn.execute(
                    "INSERT INTO decisions (run_id, call_id, decision) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING RETURNING call_id",
                    (run_id, call_id, Jsonb(decision)),
                )
            ).fetchone()
            if inserted is None:
                raise Conflict("a decision for that call exists already")
            await conn.execute(
                "UPDATE runs SET state = 'running', pending = NULL, waiting_since = NULL,"
                " lease_owner = NULL, lease_expires = now() WHERE id = %s",
                (run_id,),
            )

    async def decision(self, run_id: str, call_id: str) -> dict | None:
        row = await self._one(
            "SELECT decision FROM decisions WHERE run_id = %s AND call_id = %s", (run_id, call_id)
        )
        return row["decision"] if row else None

    # --- idempotent side effects --------------------------------------------------------------

    async def result(self, key: str) -> dict | None:
        row = await self._one("SELECT result FROM tool_results WHERE key = %s", (key,))
        return row["result"] if row else None

    async def record_result(self, key: str, run_id: str, call_id: str, result: dict) -> None:
        await self._one(
            "INSERT INTO tool_results (key, run_id, call_id, result) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (key) DO NOTHING RETURNING key",
            (key, run_id, call_id, Jsonb(result)),
        )

    # --- events -------------------------------------------------------------------------------

    @staticmethod
    async def _add_event(conn, run_id: str, key: str, type_: str, data: dict[str, Any]) -> None:
        """Append unless an event with this key exists: numbered after the run's last one, and
        announced to the streams' listeners when the transaction commits. One writer per run at
        a time (till the transaction ends): numbering never races, even with a lease in doubt."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("events:" + run_id,))
        added = await conn.execute(
            "INSERT INTO events (run_id, seq, key, type, data)"
            " SELECT %s, coalesce(max(seq), 0) + 1, %s, %s, %s FROM events WHERE run_id = %s"
            " ON CONFLICT (run_id, key) DO NOTHING",
            (run_id, key, type_, Jsonb(data), run_id),
        )
        if added.rowcount:
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, run_id))

    async def add_event(self, run_id: str, key: str, type_: str, data: dict[str, Any]) -> None:
        """A worker's event, unless its owner has cancelled the run (its last event is that)."""
        async with self.pool.connection() as conn, conn.transaction():
            # After cancel() commits, this sees it: it takes the same lock, first (_add_event).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("events:" + run_id,))
            run = await (
                await conn.execute("SELECT state FROM runs WHERE id = %s", (run_id,))
            ).fetchone()
            if run is not None and run["state"] != "cancelled":
                await self._add_event(conn, run_id, key, type_, data)

    async def newest_event(self, run_id: str) -> int:
        """The run's last event number (0: none yet)."""
        row = await self._one("SELECT max(seq) AS seq FROM events WHERE run_id = %s", (run_id,))
        return row["seq"] or 0

    async def events_after(self, run_id: str, seq: int, limit: int = 100) -> list[dict]:
        return await self._all(
            "SELECT seq, type, data FROM events WHERE run_id = %s AND seq > %s"
            " ORDER BY seq LIMIT %s",
            (run_id, seq, limit),
        )
