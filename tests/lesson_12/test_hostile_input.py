"""Lesson 12's server (code/lesson12/a2a_server.py) against a caller who sends what its database
cannot hold, makes it fail, or races its own cap: one replica on a real PostgreSQL (make test's),
driven over plain HTTP as an attacker would. No sandbox runs (the questions need none).

Before: a `contextId` of 40 characters overflowed the SDK's `tasks.context_id VARCHAR(36)`, and the
SDK's JSON-RPC route answered `InternalError(str(e))`: the caller read the SQL statement and its
parameters, and the task's work row stayed held until its lease lapsed. Any other exception's text
(a database's address) reached the caller the same way."""

import asyncio
import json

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from support.lessons import import_lesson
from support.waiting import wait_for
from tests.lesson_12.conftest import Replicas

VERSION = {"A2A-Version": "1.0"}
CAP = 5  # MAX_ACTIVE_TASKS_PER_CALLER, low: each accepted task runs the agent
LEAKS = ("insert", "select", "varchar", "sqlalchemy", "asyncpg", "connect", "127.0.0.1", "errno")


def rpc(method: str, params: dict) -> dict:
    return {"jsonrpc": "2.0", "id": "1", "method": method, "params": params}


def message(text: str, **ids) -> dict:
    return {"messageId": "m-1", "role": "ROLE_USER", "parts": [{"text": text}], **ids}


@pytest.fixture(scope="module")
def server(postgres_server, tokens, tmp_path_factory):
    if not postgres_server.running():
        postgres_server.kill()
        postgres_server.start()
    dsn = postgres_server.create_database()
    folder = tmp_path_factory.mktemp("replica")
    replica = Replicas(dsn, folder, tokens["_file"], MAX_ACTIVE_TASKS_PER_CALLER=CAP)
    replica.start(0)
    yield replica
    replica.stop()
    if postgres_server.running():
        postgres_server.drop_database(dsn.rsplit("/", 1)[1])


def work_rows(dsn: str, owner: str = "planner") -> list:
    with psycopg.connect(dsn) as conn:
        query = "SELECT task_id, context_id FROM a2a_work WHERE owner = %s"
        return conn.execute(query, (owner,)).fetchall()


@pytest.mark.parametrize(
    "ids",
    [
        {"contextId": "c" * 40},
        {"contextId": "ctx'; --"},
        {"taskId": "t" * 40},
        {"messageId": "m" * 300},
    ],
    ids=["long-context", "odd-context", "long-task", "long-message"],
)
def test_an_id_the_store_cannot_hold_is_invalid_params_and_nothing_is_held(server, tokens, ids):
    headers = {"Authorization": f"Bearer {tokens['planner']}", **VERSION}
    sent = rpc("SendMessage", {"message": message("Why use a multi-stage Docker build?", **ids)})
    r = httpx.post(f"{server.url(0)}/a2a/jsonrpc", json=sent, headers=headers, timeout=120)
    error = r.json()["error"]
    if "taskId" in ids:  # a task that cannot be stored cannot exist
        assert error["code"] == -32001, r.text  # TaskNotFound
    else:
        assert error["code"] == -32602, r.text  # InvalidParams
        assert next(iter(ids)).removesuffix("Id").lower() in error["message"].lower().replace(
            "_", ""
        )
    assert not any(leak in r.text.lower() for leak in LEAKS), r.text
    rest = httpx.post(
        f"{server.url(0)}/a2a/rest/message:send",
        json={"message": message("Why use a multi-stage Docker build?", **ids)},
        headers=headers,
        timeout=120,
    )
    assert rest.status_code == (404 if "taskId" in ids else 400), rest.text
    assert not any(leak in rest.text.lower() for leak in LEAKS), rest.text
    assert work_rows(server.dsn) == []


@pytest.mark.parametrize(
    "part",
    [
        {"raw": "dGNr", "mediaType": "application/x-unsupported"},
        {"text": "<b>hi</b>", "mediaType": "text/html"},
        {"url": "http://127.0.0.1:1/x.png", "mediaType": "image/png"},
    ],
    ids=["raw", "text", "url"],
)
def test_a_part_whose_media_type_the_card_does_not_list_is_refused(server, tokens, part):
    """The card takes text/plain and application/json (lesson12/card.py): any other stated
    mediaType is ContentTypeNotSupportedError (-32005), before a task or its work row is made."""
    headers = {"Authorization": f"Bearer {tokens['planner']}", **VERSION}
    sent = {"messageId": "m-ct", "role": "ROLE_USER", "parts": [part]}
    r = httpx.post(
        f"{server.url(0)}/a2a/jsonrpc", json=rpc("SendMessage", {"message": sent}),
        headers=headers, timeout=120,
    )  # fmt: skip
    error = r.json()["error"]
    assert error["code"] == -32005 and part["mediaType"] in error["message"], r.text
    rest = httpx.post(
        f"{server.url(0)}/a2a/rest/message:send", json={"message": sent}, headers=headers,
        timeout=120,
    )  # fmt: skip
    assert rest.status_code in (400, 415), rest.text  # v1.0.0 says 415, v1.0.1 400
    assert work_rows(server.dsn) == []


def test_an_unexpected_failure_is_a_bare_internal_error(tmp_path, monkeypatch):
    """The database unreachable (in process, nothing listens on its port): the caller learns that
    something failed, not where the database is or what was asked of it."""
    callers = tmp_path / "callers"
    callers.write_text("planner a-token\n")
    monkeypatch.setenv("DATABASE_URL", "postgresql://agent:secret@127.0.0.1:1/tasks")
    monkeypatch.setenv("A2A_CALLERS_FILE", str(callers))
    app = import_lesson("lesson12.a2a_server").app
    client = TestClient(app, raise_server_exceptions=False)
    headers = {"Authorization": "Bearer a-token", "Host": "127.0.0.1", **VERSION}
    r = client.post("/a2a/jsonrpc", json=rpc("GetTask", {"id": "task-1"}), headers=headers)
    error = r.json()["error"]
    assert error["code"] == -32603, r.text  # InternalError
    assert not any(leak in r.text.lower() for leak in LEAKS), r.text
    assert "secret" not in r.text
    assert json.loads(r.text)["error"]["message"]


def test_many_messages_at_once_from_one_caller_start_no_more_tasks_than_its_cap(server, tokens):
    headers = {"Authorization": f"Bearer {tokens['bob']}", **VERSION}

    async def at_once(n: int) -> list[dict]:
        async with httpx.AsyncClient(timeout=600) as http:
            sends = [
                http.post(
                    f"{server.url(0)}/a2a/jsonrpc",
                    json=rpc(
                        "SendMessage", {"message": message("What is 2**100?", messageId=f"m{i}")}
                    ),
                    headers=headers,
                )
                for i in range(n)
            ]
            return [r.json() for r in await asyncio.gather(*sends)]

    answers = asyncio.run(at_once(30))
    accepted = [a for a in answers if "result" in a]
    refused = [a["error"] for a in answers if "error" in a]
    assert len(accepted) + len(refused) == 30, answers
    assert 0 < len(accepted) <= CAP, len(accepted)
    assert all(e["code"] == -32600 for e in refused), refused  # InvalidRequest
    assert all(f"at most {CAP} tasks going per caller" in e["message"] for e in refused), refused
    assert len(work_rows(server.dsn, "bob")) == len(accepted)  # each waits for bob's decision


def test_a_reserved_row_no_task_took_goes_once_its_lease_lapses(server):
    """A message admitted whose task never started (the SDK failed in between, the replica died)
    leaves its reserved row to the lease: Recovery claims it, finds no task, and removes it."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO a2a_work (task_id, owner, context_id, replica, lease_expires)"
            " VALUES ('slot-never-taken', 'carol', '', 'gone', now() - interval '1 second')"
        )
    wait_for(lambda: work_rows(server.dsn, "carol") == [], timeout=120, what="the row to go")
