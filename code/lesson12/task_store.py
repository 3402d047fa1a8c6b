"""Lesson 12: the SDK's versioned task store in PostgreSQL, with each write one statement.

The SDK's VersionedDatabaseTaskStore writes a task in a transaction of six round trips (BEGIN, the
version's compare-and-swap, the ORM's SELECT before its merge, the task's INSERT or UPDATE, the
event's INSERT, COMMIT), and looks a new task up three times before its first write, each look a
transaction of its own. `make bench-a2a` counted 18 statements per message to the echo agent.

This store keeps the SDK's tables, rows and rules and sends each write as one statement: the
version's compare-and-swap, the task's upsert and the event's insert are CTEs of one INSERT, which
PostgreSQL runs atomically. The compare-and-swap is still the guard: when another writer moved the
version first, the statement changes nothing and the caller gets ConcurrentTaskModificationError,
as from the SDK's store. A task id this replica has just made up (FreshIds) is known to be absent
until its first write, so looking it up sends nothing. A cancel, rare, keeps the SDK's own path.
A new task's first write may be held for its second (`hold`, for lesson12/fast_messages.py): the
two go as one statement, the version row made at 2 and both events logged.
"""

import collections
import uuid

from a2a.server.cluster import VersionedDatabaseTaskStore
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.cluster.version import TaskVersion
from a2a.server.id_generator import IDGenerator, IDGeneratorContext
from a2a.types import TaskState
from a2a.utils.proto_utils import to_stream_response
from sqlalchemy import bindparam, exists, func, inspect, select, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine


class OneStatementTaskStore(VersionedDatabaseTaskStore):
    FRESH_MOST = 10_000  # ids made up and not written yet, remembered; the oldest forgotten

    def __init__(self, engine: AsyncEngine, writer: AsyncEngine | None = None, **kwargs):
        """`engine` serves the SDK's own paths (reads, a cancel); `writer`, made with
        isolation_level="AUTOCOMMIT" and no pre-ping, this store's writes: one round trip each.
        (A pre-ping is three on asyncpg outside autocommit: BEGIN, a ping, ROLLBACK.)"""
        super().__init__(engine, **kwargs)
        self.fresh: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.writer = writer or engine.execution_options(isolation_level="AUTOCOMMIT")
        self.statements = {}  # (first write, events): the statement, built once
        self.holding: set[str] = set()  # new tasks whose first write is to be held (hold)
        self.held: dict[str, dict] = {}  # task id: its first write, not sent yet

    async def get(self, task_id: str, context):
        if task_id in self.fresh:  # made up here a moment ago: nobody has written it
            return None
        return await super().get(task_id, context)

    def hold(self, task_id: str) -> None:
        """The next write of this new task is held until the one after it, and both are sent as
        one statement; `flush` sends it alone. For fast_messages.Lane: a new task's `Task` and
        the executor's next event, when it sends that next without waiting on anything (the echo
        agent's answer). The caller flushes before it answers, and as soon as the executor
        waits on anything else: nobody learns of a task that is not written."""
        self.holding.add(task_id)

    async def flush(self, task_id: str) -> None:
        self.holding.discard(task_id)
        held = self.held.pop(task_id, None)
        if held is not None:
            try:
                await self._write(held)
            except BaseException:
                self.held.setdefault(task_id, held)  # the next write takes it along
                raise

    async def _save_once(self, task, *, event, prev_version: TaskVersion, owner: str):
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            await self.flush(task.id)
            return await super()._save_once(
                task, event=event, prev_version=prev_version, owner=owner
            )
        first = prev_version.is_missing  # the version row is made, or another writer won
        unmoved = None if first else prev_version._value
        new = 1 if first else unmoved + 1
        events = []
        held = self.held.pop(task.id, None)
        together = held is not None and held["v_owner"] == owner and unmoved == 1
        if together:
            first, unmoved, events = True, None, [*held["events"]]  # both, as the first write
        elif held is not None:
            await self._write(held)
        if event is not None:
            events.append((new, to_stream_response(event).SerializeToString()))
        model = self._db._to_orm(task, owner)  # the SDK's own conversion of a task to its row
        values = {"v_task_id": task.id, "v_owner": owner, "v_old": unmoved, "v_new": new}
        for attr in inspect(model).mapper.column_attrs:
            values[f"t_{attr.columns[0].name}"] = getattr(model, attr.key)
        values["events"] = events
        if first and task.id in self.holding:
            self.holding.discard(task.id)
            self.held[task.id] = values
            return TaskVersion(new)
        try:
            await self._write(values)
        except BaseException:
            if together:  # as it was: a retry finds it again
                self.held.setdefault(task.id, held)
            raise
        return TaskVersion(new)

    async def _write(self, values: dict) -> None:
        """One write: the version's compare-and-swap, the task's row, its events."""
        task_id, events = values["v_task_id"], values["events"]
        first = values["v_old"] is None
        statement = self._statement(first, len(events))
        sent = {k: v for k, v in values.items() if k != "events"}
        for n, (version, data) in enumerate(events):
            sent[f"e{n}_version"], sent[f"e{n}_event_data"] = version, data
        try:
            written = await self._run(statement, sent)
        except DBAPIError as exc:
            # A connection the server closed (PostgreSQL restarted): the pool drops them all.
            # Sent again on a new one while the version is still the one it started from; when
            # it moved (this write committed before the break, or another's), the caller is told
            # as of a conflict, reloads and decides: never written twice, never claimed unseen.
            if not exc.connection_invalidated:
                raise
            still = await self._version(task_id, values["v_owner"]) == values["v_old"]
            written = await self._run(statement, sent) if still else 0
        if not written:
            raise ConcurrentTaskModificationError(task_id)
        self.fresh.pop(task_id, None)

    def _statement(self, first: bool, events: int):
        """The write as one statement, built once for each of its shapes (building it is most
        of its cost in Python): the version's compare-and-swap (`guard`), then the task's
        upsert and the insert of its events (none, one, or two when a held write goes along),
        each only where the guard changed a row."""
        if (first, events) in self.statements:
            return self.statements[first, events]
        versions = self._version_model.__table__
        tasks = self._db.task_model.__table__
        if first:
            guard = insert(versions).values(
                task_id=bindparam("v_task_id"),
                owner=bindparam("v_owner"),
                version=bindparam("v_new"),
            )
            guard = guard.on_conflict_do_nothing()
        else:
            same = (
                versions.c.task_id == bindparam("v_task_id"),
                versions.c.owner.is_not_distinct_from(bindparam("v_owner")),
                versions.c.version == bindparam("v_old"),
            )
            guard = update(versions).where(*same).values(version=bindparam("v_new"))
        guard = guard.returning(versions.c.version).cte("guard")
        won = exists(select(guard.c.version))
        cells = [bindparam(f"t_{c.name}", type_=c.type).label(c.name) for c in tasks.columns]
        upsert = insert(tasks).from_select(
            [c.name for c in tasks.columns], select(*cells).where(won)
        )
        kept = {c.name: upsert.excluded[c.name] for c in tasks.columns if not c.primary_key}
        ctes = [upsert.on_conflict_do_update(index_elements=[tasks.c.id], set_=kept).cte("task")]
        if events:
            log = self._event_model.__table__
            rows = []
            for n in range(events):
                logged = {"task_id": "v_task_id", "owner": "v_owner"}
                logged |= {"task_version": f"e{n}_version", "event_data": f"e{n}_event_data"}
                cells = [
                    bindparam(name, type_=log.c[column].type).label(column)
                    for column, name in logged.items()
                ]
                rows.append(select(*cells).where(won))
            source = rows[0] if events == 1 else union_all(*rows)  # in this order: its seq
            ctes.append(insert(log).from_select(list(logged), source).cte("event"))
        built = select(func.count()).select_from(guard).add_cte(*ctes)
        self.statements[first, events] = built
        return built

    async def _run(self, statement, values: dict) -> int:
        async with self.writer.connect() as conn:  # one statement is atomic: no BEGIN, no COMMIT
            return (await conn.execute(statement, values)).scalar_one()

    async def _version(self, task_id: str, owner: str) -> int | None:
        versions = self._version_model.__table__
        query = select(versions.c.version).where(
            versions.c.task_id == task_id, versions.c.owner == owner
        )
        async with self.writer.connect() as conn:
            return (await conn.execute(query)).scalar_one_or_none()


class FreshIds(IDGenerator):
    """New task ids (uuid4, as the SDK makes them), each told to the store as not written yet."""

    def __init__(self, store: OneStatementTaskStore):
        self.store = store

    def generate(self, context: IDGeneratorContext) -> str:
        task_id = str(uuid.uuid4())
        self.store.fresh[task_id] = None
        while len(self.store.fresh) > self.store.FRESH_MOST:
            self.store.fresh.popitem(last=False)
        return task_id
