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
"""

import collections
import uuid

from a2a.server.cluster import VersionedDatabaseTaskStore
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.cluster.version import TaskVersion
from a2a.server.id_generator import IDGenerator, IDGeneratorContext
from a2a.types import TaskState
from a2a.utils.proto_utils import to_stream_response
from sqlalchemy import exists, func, inspect, literal, select, update
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

    async def get(self, task_id: str, context):
        if task_id in self.fresh:  # made up here a moment ago: nobody has written it
            return None
        return await super().get(task_id, context)

    async def _save_once(self, task, *, event, prev_version: TaskVersion, owner: str):
        if task.status.state == TaskState.TASK_STATE_CANCELED:
            return await super()._save_once(
                task, event=event, prev_version=prev_version, owner=owner
            )
        versions = self._version_model.__table__
        tasks = self._db.task_model.__table__
        if prev_version.is_missing:  # the first write: the version row is made, or another won
            new = 1
            guard = insert(versions).values(task_id=task.id, owner=owner, version=new)
            guard = guard.on_conflict_do_nothing()
        else:
            old = prev_version._value
            new = old + 1
            same = versions.c.task_id == task.id, versions.c.owner == owner
            guard = update(versions).where(*same, versions.c.version == old).values(version=new)
        guard = guard.returning(versions.c.version).cte("guard")
        won = exists(select(guard.c.version))

        model = self._db._to_orm(task, owner)  # the SDK's own conversion of a task to its row
        row = {
            attr.columns[0].name: getattr(model, attr.key)
            for attr in inspect(model).mapper.column_attrs
        }
        cells = [literal(row[c.name], type_=c.type).label(c.name) for c in tasks.columns]
        upsert = insert(tasks).from_select(
            [c.name for c in tasks.columns], select(*cells).where(won)
        )
        kept = {c.name: upsert.excluded[c.name] for c in tasks.columns if not c.primary_key}
        ctes = [upsert.on_conflict_do_update(index_elements=[tasks.c.id], set_=kept).cte("task")]
        if event is not None:
            events = self._event_model.__table__
            data = to_stream_response(event).SerializeToString()
            logged = {"task_id": task.id, "owner": owner, "task_version": new, "event_data": data}
            cells = [literal(v, type_=events.c[k].type).label(k) for k, v in logged.items()]
            ctes.append(
                insert(events).from_select(list(logged), select(*cells).where(won)).cte("event")
            )
        statement = select(func.count()).select_from(guard).add_cte(*ctes)
        try:
            written = await self._run(statement)
        except DBAPIError as exc:
            # A connection the server closed (PostgreSQL restarted): the pool drops them all.
            # Sent again on a new one while the version is still the one it started from; when
            # it moved (this write committed before the break, or another's), the caller is told
            # as of a conflict, reloads and decides: never written twice, never claimed unseen.
            if not exc.connection_invalidated:
                raise
            old = None if prev_version.is_missing else prev_version._value
            written = (
                await self._run(statement) if await self._version(task.id, owner) == old else 0
            )
        if not written:
            raise ConcurrentTaskModificationError(task.id)
        self.fresh.pop(task.id, None)
        return TaskVersion(new)

    async def _run(self, statement) -> int:
        async with self.writer.connect() as conn:  # one statement is atomic: no BEGIN, no COMMIT
            return (await conn.execute(statement)).scalar_one()

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
