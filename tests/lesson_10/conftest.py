"""Lesson 10's API as a learner runs it (its own process), on the real PostgreSQL of `make test`, as
the least-privilege role Compose gives it; sandbox runs in real containers, counted on the host."""

import json
import os
import sys
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from support.lessons import run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for
from tests.support.sandbox_engine import engine_with_image, sandbox_starts_of

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "code" / "lesson10" / "durable_runs.py"
ROLE_SQL = ROOT / "code" / "lesson10" / "agent-role.sql"
# The runner's restrictions need only Python in the image; the course's sandbox image is for the
# container suites (`make build`). Every container a test starts carries this owner label.
SANDBOX_IMAGE = "python:3.11-slim"
# One owner per test process: a count of sandbox starts sees only its own process's tests (their
# tests run one after another; other processes run theirs at the same time).
OWNER = f"lesson-10-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


def role_sql(role: str, password: str, database: str) -> sql.Composed:
    """code/lesson10/agent-role.sql with its psql variables filled in, as psql would."""
    text = ROLE_SQL.read_text()
    parts = []
    for chunk in text.replace(":'agent_password'", "\x00p\x00").split("\x00"):
        if chunk == "p":
            parts.append(sql.Literal(password))
            continue
        for i, piece in enumerate(chunk.split(':"agent_role"')):
            if i:
                parts.append(sql.Identifier(role))
            for j, bit in enumerate(piece.split(':"db"')):
                if j:
                    parts.append(sql.Identifier(database))
                parts.append(sql.SQL(bit))
    return sql.Composed(parts)


@pytest.fixture
def agent_dsn(postgres_server, postgres_dsn) -> str:
    """A fresh database and a role like Compose's `agent`: what the API connects as."""
    database = postgres_dsn.rsplit("/", 1)[1]
    role, password = f"agent_{database}", "pw-" + database
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(role_sql(role, password, database))
    yield postgres_server.dsn_for(role, password, database)
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)))  # fmt: skip
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(scope="session")
def engine():
    yield from engine_with_image(SANDBOX_IMAGE, OWNER)


class Api:
    """One replica of lesson 10's API: start, kill -9, start again on the same port."""

    def __init__(self, dsn: str, tmp_path: Path, name: str, **settings):
        self.port = free_port()
        self.name = name
        self.env = offline_environment(
            DATABASE_URL=dsn,
            PORT=self.port,
            SANDBOX_IMAGE=SANDBOX_IMAGE,
            SANDBOX_OWNER=OWNER,
            LEASE_SECONDS=2,
            REPLICA_ID=name,
            **settings,
        )
        self.log_dir = tmp_path
        self.starts = 0
        self.server: ServerProcess | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "Api":
        self.starts += 1
        self.server = ServerProcess(
            [sys.executable, *run_module(SCRIPT)], cwd=ROOT, env=self.env, port=self.port,
            ready_timeout=60, log_path=self.log_dir / f"{self.name}-{self.starts}.log",
        )  # fmt: skip
        self.server.start()
        return self

    def kill9(self) -> None:
        self.server.process.kill()  # SIGKILL: no shutdown code runs
        self.server.process.wait(30)

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def api_factory(agent_dsn, tmp_path):
    made = []

    def make(name: str = "r1", **settings) -> Api:
        api = Api(agent_dsn, tmp_path, name, **settings)
        made.append(api)
        return api

    yield make
    for api in made:
        api.stop()


@pytest.fixture
def api(api_factory):
    return api_factory().start()


def start_run(api: Api, query: str = "What is 2**100?", token: str | None = None) -> tuple:
    with api.client(token) as c:
        r = c.post("/v1/runs", json={"query": query})
    assert r.status_code == 202, r.text
    return r.json()["run_id"], r.json()["owner_token"]


def state(api: Api, run_id: str, token: str) -> dict:
    with api.client(token) as c:
        r = c.get(f"/v1/runs/{run_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_state(
    api: Api, run_id: str, token: str, wanted: str, timeout: float = 90, recovering: bool = False
) -> dict:
    """The run's state once it is `wanted`. `recovering`: the database is coming back, so a 503
    (database_unavailable, retryable) is an answer to wait through: the pool reconnects with a
    growing back-off after an outage."""

    def reached():
        with api.client(token) as c:
            r = c.get(f"/v1/runs/{run_id}")
        if recovering and r.status_code == 503:
            assert r.json()["error"]["type"] == "database_unavailable", r.text
            return None
        assert r.status_code == 200, r.text
        s = r.json()
        assert s["state"] not in {"failed", "expired"} - {wanted}, (s, api.logs()[-3000:])
        return s if s["state"] == wanted else None

    return wait_for(reached, timeout=timeout, interval=0.2, what=f"run {run_id} {wanted}")


def events(api, run_id: str, token: str, last_id: int = 0) -> list[dict]:
    """The whole stream from `last_id` to its end event, parsed; `api` is an Api, or anything else
    with the `url` of lesson 10's API (the compose stack of test_containers.py)."""
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(last_id)}
    found = []
    with httpx.stream("GET", f"{api.url}/v1/runs/{run_id}/events", headers=headers,
                      timeout=60) as r:  # fmt: skip
        assert r.status_code == 200
        event = {}
        for line in r.iter_lines():
            if line.startswith("id: "):
                event["id"] = int(line[4:])
            elif line.startswith("data: "):
                event.update(json.loads(line[6:]))
            elif not line and event:
                found.append(event)
                event = {}
    return found


@pytest.fixture
def sandbox_starts():
    """sandbox_starts() -> the sandbox containers this test process starts from now on, followed
    live; `.per("agent-sandbox.key")` counts them per idempotency key."""
    yield from sandbox_starts_of(OWNER)
