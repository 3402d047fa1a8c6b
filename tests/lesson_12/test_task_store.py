"""Lesson 12's task store (code/lesson12/task_store.py) against the SDK's, on a real PostgreSQL:
the same writes leave the same rows, the compare-and-swap still lets one of two writers win, and a
task id the server made up is looked up without a query. Each write is one statement."""

import asyncio

import pytest
from a2a.helpers import new_task_from_user_message, new_text_message
from a2a.server.agent_execution import SimpleRequestContextBuilder
from a2a.server.cluster import VersionedDatabaseTaskStore
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.cluster.version import TaskVersion
from a2a.server.context import ServerCallContext
from a2a.types import Role, TaskState, TaskStatus, TaskStatusUpdateEvent
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from lesson12.callers import Caller
from lesson12.task_store import FreshIds, OneStatementTaskStore

STATEMENTS = []  # what the test's engine sent, each statement's text
PLANNER = ServerCallContext(user=Caller("planner"))


def message(text_: str, task_id: str = ""):
    sent = new_text_message(text_)
    sent.role = Role.ROLE_USER
    if task_id:
        sent.task_id = task_id
    return sent


async def written(store, statements: list) -> dict:
    """A task's life as the SDK's handler writes it: made, then completed, each with its event."""
    task = new_task_from_user_message(message("hello"))
    v1 = await store.save(task, event=task, prev_version=TaskVersion.MISSING, context=PLANNER)
    completed = TaskStatus(state=TaskState.TASK_STATE_COMPLETED)
    done = TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id, status=completed)
    task.status.CopyFrom(done.status)
    statements.clear()
    v2 = await store.save(task, event=done, prev_version=v1, context=PLANNER)
    return {"task": task, "versions": (v1, v2), "update_statements": len(statements)}


async def rows(db, task_id: str) -> dict:
    async with db.connect() as conn:

        def one(sql):
            return conn.execute(text(sql), {"id": task_id})

        tasks = (await one("SELECT context_id, owner, status::text, (history->0->'parts')::text, "
                           "json_array_length(history), kind, protocol_version FROM tasks "
                           "WHERE id = :id")).all()  # fmt: skip
        version = (await one("SELECT version FROM task_versions WHERE task_id = :id")).all()
        events = (await one("SELECT task_version, length(event_data) FROM task_events "
                            "WHERE task_id = :id ORDER BY seq")).all()  # fmt: skip
    return {"tasks": tasks, "version": version, "events": events}


@pytest.fixture
def db(postgres_dsn):
    db = create_async_engine(postgres_dsn.replace("://", "+asyncpg://", 1))
    STATEMENTS.clear()
    event.listen(db.sync_engine, "before_cursor_execute",
                 lambda *args: STATEMENTS.append(args[2]))  # fmt: skip
    yield db
    asyncio.run(db.dispose())


def test_the_same_writes_leave_the_same_rows_as_the_sdks_store(db):
    async def run():
        ours, sdks = OneStatementTaskStore(db), VersionedDatabaseTaskStore(db)
        await ours.initialize()
        found = {}
        for name, store in (("ours", ours), ("sdk", sdks)):
            life = await written(store, STATEMENTS)
            found[name] = life | await rows(db, life["task"].id)
            stored = await ours.get(life["task"].id, PLANNER)
            assert stored.task.status.state == TaskState.TASK_STATE_COMPLETED
            assert stored.version == life["versions"][1]
        await db.dispose()
        return found

    found = asyncio.run(run())
    for key in ("tasks", "version", "events", "versions"):
        ours, sdks = found["ours"][key], found["sdk"][key]
        if key == "tasks":  # the ids differ; the rest must not
            ours, sdks = [r[1:] for r in ours], [r[1:] for r in sdks]
        assert ours == sdks, key
    assert found["ours"]["update_statements"] == 1  # the SDK's: 5 (with its SELECT before merge)
    assert found["sdk"]["update_statements"] > 1


def test_of_two_writers_from_one_version_one_wins_and_the_other_is_told(db):
    async def run():
        store = OneStatementTaskStore(db)
        await store.initialize()
        life = await written(store, STATEMENTS)
        task, v2 = life["task"], life["versions"][1]
        attempts = [store.save(task, prev_version=v2, context=PLANNER) for _ in range(2)]
        outcomes = await asyncio.gather(*attempts, return_exceptions=True)
        stale_first_write = store.save(task, prev_version=TaskVersion.MISSING, context=PLANNER)
        late = await asyncio.gather(stale_first_write, return_exceptions=True)
        state = await rows(db, task.id)
        await db.dispose()
        return outcomes, late, state

    outcomes, late, state = asyncio.run(run())
    assert sorted(type(o).__name__ for o in outcomes) == ["ConcurrentTaskModificationError",
                                                          "TaskVersion"], outcomes  # fmt: skip
    assert isinstance(late[0], ConcurrentTaskModificationError)  # the version row exists
    assert state["version"] == [(3,)] and len(state["events"]) == 2  # the losers wrote nothing


def test_a_task_id_made_up_here_is_absent_without_a_query_until_it_is_written(db):
    async def run():
        store = OneStatementTaskStore(db)
        await store.initialize()
        ids = FreshIds(store)
        builder = SimpleRequestContextBuilder(task_id_generator=ids)
        context = await builder.build(params=_send(message("hi")), context=PLANNER)
        STATEMENTS.clear()
        absent = await store.get(context.task_id, PLANNER)
        queried = len(STATEMENTS)
        task = new_task_from_user_message(context.message)
        task.id = context.task_id
        await store.save(task, event=task, prev_version=TaskVersion.MISSING, context=PLANNER)
        present = await store.get(task.id, PLANNER)
        for _ in range(store.FRESH_MOST + 5):
            ids.generate(None)
        await db.dispose()
        return absent, queried, present, task.id in store.fresh, len(store.fresh)

    absent, queried, present, still_fresh, remembered = asyncio.run(run())
    assert absent is None and queried == 0
    assert present is not None and not still_fresh
    assert remembered == OneStatementTaskStore.FRESH_MOST  # bounded


def _send(sent):
    from a2a.types import SendMessageRequest

    return SendMessageRequest(message=sent)


def test_a_write_after_postgresql_restarted_goes_through_once(postgres_server, postgres_dsn):
    """The writer keeps no pre-ping (three round trips a checkout on asyncpg): a connection the
    restart closed fails the first try, and the write is sent again on a new one, once."""
    url = postgres_dsn.replace("://", "+asyncpg://", 1)

    async def run():
        reader = create_async_engine(url, pool_pre_ping=True)
        writer = create_async_engine(url, isolation_level="AUTOCOMMIT")
        store = OneStatementTaskStore(reader, writer)
        await store.initialize()
        task = new_task_from_user_message(message("hello"))
        v1 = await store.save(task, event=task, prev_version=TaskVersion.MISSING, context=PLANNER)
        await asyncio.to_thread(postgres_server.restart)
        task.status.state = TaskState.TASK_STATE_COMPLETED
        v2 = await store.save(task, event=task, prev_version=v1, context=PLANNER)
        state = await rows(reader, task.id)
        for engine in (reader, writer):
            await engine.dispose()
        return v2, state

    v2, state = asyncio.run(run())
    assert v2 == TaskVersion(2)
    assert state["version"] == [(2,)] and [e[0] for e in state["events"]] == [1, 2]
    assert "COMPLETED" in state["tasks"][0][2]


def test_a_message_that_names_only_its_task_is_put_in_that_tasks_context(db):
    """Sealed (lesson12/durable.py) fills in the context of the task a message names, for any
    agent the composition serves: the SDK's own handler would make up a new context."""
    from lesson12.durable import Sealed

    class Handler:
        def __init__(self, store):
            self.task_store, self.seen = store, []

        async def on_message_send(self, params, context):
            self.seen.append(params.message.context_id)
            return "sent"

    async def run():
        store = OneStatementTaskStore(db)
        await store.initialize()
        task = new_task_from_user_message(message("hello"))
        await store.save(task, event=task, prev_version=TaskVersion.MISSING, context=PLANNER)
        handler = Handler(store)
        sealed = Sealed(handler)
        await sealed.on_message_send(_send(message("more", task_id=task.id)), PLANNER)
        stranger = ServerCallContext(user=Caller("bob"))  # bob's tasks only: none
        await sealed.on_message_send(_send(message("more", task_id=task.id)), stranger)
        await db.dispose()
        return task.context_id, handler.seen

    context_id, seen = asyncio.run(run())
    assert context_id and seen == [context_id, ""]  # another owner's task is not looked into
