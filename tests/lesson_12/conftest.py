"""Lesson 12's A2A server as a learner runs it (its own processes): two replicas of
code/lesson12/a2a_server.py on one real PostgreSQL (make test's), each task's run_python in a real
sandbox container, counted on the host."""

import os
import secrets
import sys

import pytest

from support.lessons import ROOT, run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from tests.support.a2a import A2A, first_task, run, states, user_text
from tests.support.sandbox_engine import engine_with_image, sandbox_starts_of

SERVER = ROOT / "code" / "lesson12" / "a2a_server.py"
# The runner's restrictions need only Python in the image (lesson 10's tests do the same).
SANDBOX_IMAGE = "python:3.11-slim"
OWNER = f"lesson-12-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"


class Replicas:
    """Two replicas of the server on one database: start, kill -9, start again."""

    def __init__(self, dsn: str, tmp_path, callers_file, **settings):
        self.dsn, self.tmp_path, self.callers_file = dsn, tmp_path, callers_file
        self.settings = settings
        self.ports = [free_port(), free_port()]
        self.servers: list[ServerProcess | None] = [None, None]
        self.starts = 0

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def start(self, i: int) -> ServerProcess:
        self.starts += 1
        env = offline_environment(
            DATABASE_URL=self.dsn,
            PORT=self.ports[i],
            REPLICA_ID=f"replica{i + 1}",
            A2A_CALLERS_FILE=self.callers_file,
            SANDBOX_IMAGE=SANDBOX_IMAGE,
            SANDBOX_OWNER=OWNER,
            **{"LEASE_SECONDS": 1.5, "OFFLINE_TOKEN_DELAY_MS": 0, **self.settings},
        )
        log = self.tmp_path / f"replica{i + 1}-{self.starts}.log"
        self.servers[i] = ServerProcess(
            [sys.executable, *run_module(SERVER)], cwd=ROOT, env=env, port=self.ports[i],
            ready_path="/ready", ready_timeout=90, log_path=log,
        ).start()  # fmt: skip
        return self.servers[i]

    def kill9(self, i: int) -> None:
        self.servers[i].process.kill()  # SIGKILL: no shutdown code runs
        self.servers[i].process.wait(30)

    def stop(self) -> None:
        for server in self.servers:
            if server is not None:
                server.stop()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("*.log")))


def ask_to_wait(replicas: "Replicas", tokens: dict, replica: int = 0):
    """A task on `replica` that waits for the caller's decision on run_python."""
    client = A2A(replicas.url(replica), tokens["planner"])
    events = run(client.send(user_text("What is 2**100?")))
    assert states(events)[-1] == "input-required", states(events)
    return run(client.get(first_task(events).id))


@pytest.fixture(scope="session")
def engine():
    yield from engine_with_image(SANDBOX_IMAGE, OWNER)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Two callers (the file make writes: "name token" a line)."""
    made = {"planner": secrets.token_hex(16), "bob": secrets.token_hex(16)}
    path = tmp_path_factory.mktemp("callers") / "callers"
    path.write_text("".join(f"{name} {token}\n" for name, token in made.items()))
    return made | {"_file": path}


@pytest.fixture(scope="module")
def replicas(postgres_server, tokens, engine, tmp_path_factory):
    """Both replicas, up, on a database of their own (one for the module's tests)."""
    if not postgres_server.running():
        postgres_server.kill()
        postgres_server.start()
    dsn = postgres_server.create_database()
    made = Replicas(dsn, tmp_path_factory.mktemp("replicas"), tokens["_file"])
    made.start(0)  # first alone: it migrates the database
    made.start(1)
    yield made
    made.stop()
    if postgres_server.running():
        postgres_server.drop_database(dsn.rsplit("/", 1)[1])


@pytest.fixture
def sandbox_starts():
    yield from sandbox_starts_of(OWNER)
