"""The engine the `docker` command uses is the one the sandbox and lesson 05's workers use, however
it is chosen: DOCKER_HOST, or a Docker context (`docker context use`), which is how Colima, rootless
Docker and Docker Desktop point the CLI at their engine.

Marker `container`. Each test gives the engine a second address, a socket in a temporary folder
that forwards to the real one and counts what passes; a context made by the `docker` CLI in a
temporary DOCKER_CONFIG (or DOCKER_HOST) names it. Code that ignored the context would still reach
the engine through the default socket, so what tells is that the calls came through that address.
"""

import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from lesson05.docker_workers import DockerWorkers
from research_agent.sandbox.docker_client import docker_client
from research_agent.sandbox.runner import SandboxConfig, SandboxRunner
from tests.support.sandbox_api import containers

pytestmark = pytest.mark.container


def engine_socket() -> str:
    """The Unix socket of the engine the `docker` command uses here."""
    host = subprocess.run(
        ["docker", "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not host.startswith("unix://"):
        pytest.skip(f"the engine is not on a Unix socket here ({host})")
    return host.removeprefix("unix://")


class Forwarder:
    """A Unix socket that passes every connection on to the engine's, counting them."""

    def __init__(self, path: Path, target: str):
        self.path, self.target, self.connections = path, target, 0
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:  # closed
                return
            self.connections += 1
            engine = socket.socket(socket.AF_UNIX)
            engine.connect(self.target)
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)  # half-closes pass on (a sandbox's stdin ends so)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def forwarder(tmp_path):
    forwarder = Forwarder(tmp_path / "engine.sock", engine_socket())
    yield forwarder
    forwarder.close()


@pytest.fixture
def in_a_context(tmp_path, forwarder, monkeypatch):
    """A DOCKER_CONFIG whose current context, made and chosen by the `docker` CLI, is the
    forwarder; no DOCKER_HOST or DOCKER_CONTEXT."""
    config = tmp_path / "docker-config"
    for name in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    host = f"host=unix://{forwarder.path}"
    for args in (["create", "course-test", "--docker", host], ["use", "course-test"]):
        subprocess.run(["docker", "context", *args], check=True, capture_output=True)
    return forwarder


def test_the_sandbox_runs_code_on_the_engine_of_the_current_context(in_a_context):
    owner = f"test-context-{uuid.uuid4().hex[:8]}"
    runner = SandboxRunner(SandboxConfig(owner=owner))
    try:
        result = runner.run("print(6 * 7)", request_id="context")
        assert result.exit_code == 0 and result.stdout == "42\n", result
        assert in_a_context.connections > 0  # through the context's address
        assert containers(runner.client, owner) == []
    finally:
        runner.close()


def test_lesson_05s_workers_reach_the_engine_of_the_current_context(in_a_context):
    class Settings:
        DEPLOYMENT = f"test-context-{uuid.uuid4().hex[:8]}"

    workers = DockerWorkers(Settings())
    try:
        assert workers.client.ping() and workers.list() == []
        assert in_a_context.connections > 0
    finally:
        workers.close()


def test_docker_host_wins_over_the_context(in_a_context, tmp_path, monkeypatch):
    """As for the CLI: DOCKER_HOST, when set, names the engine whatever the context says."""
    other = Forwarder(tmp_path / "other.sock", in_a_context.target)  # the engine's own socket
    try:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{other.path}")
        before = in_a_context.connections
        client = docker_client()
        assert client.ping()
        client.close()
        assert other.connections > 0 and in_a_context.connections == before
    finally:
        other.close()
