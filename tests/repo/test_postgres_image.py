"""The postgres:15 image a Compose file names, as the course uses it: the official image where a
registry answers, else the stand-in `make offline-images` builds (docker/offline/postgres-*). The
same checks hold for both: first start with POSTGRES_USER, POSTGRES_DB and the password from
POSTGRES_PASSWORD_FILE, the init scripts run once, `pg_isready` over TCP, a restart (STOPSIGNAL
SIGINT), a smart shutdown on SIGTERM and a kill -9, with the data in its volume each time.

Marker `container` (not in `make test`):
    make offline-images && .venv/bin/python -m pytest -m container tests/repo/test_postgres_image.py
POSTGRES_IMAGE names another image to check.
"""

import os
import subprocess
import uuid

import psycopg
import pytest

from support.waiting import wait_for
from tests.support.docker_cli import docker

pytestmark = pytest.mark.container

IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:15")
PASSWORD = "s3cret 'with' \"quotes\""  # a password with quotes and a space, from a file
INIT_SQL = (
    "CREATE TABLE seeded (id int PRIMARY KEY, note text);\nINSERT INTO seeded VALUES (1, 'init');\n"
)
# Not executable, so the entrypoint sources it; written as the official image's documentation shows.
INIT_SH = """psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<-EOSQL
	CREATE ROLE agent LOGIN PASSWORD 'agent-pw';
	GRANT SELECT ON seeded TO agent;
EOSQL
"""


class Postgres:
    """One container of the image, with its volume and its init scripts."""

    def __init__(self, tmp_path, **env):
        self.name = f"pgimg-{uuid.uuid4().hex[:8]}"
        init = tmp_path / "init"
        init.mkdir()
        (init / "01-schema.sql").write_text(INIT_SQL)
        (init / "02-role.sh").write_text(INIT_SH)
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\n")
        for path in (tmp_path, init, *init.iterdir(), secret):  # read by the server's user
            path.chmod(0o755 if path.is_dir() else 0o644)
        settings = {"POSTGRES_USER": "course", "POSTGRES_DB": "runs", **env}
        self.args = [
            "run", "-d", "--name", self.name, "-p", "127.0.0.1::5432",
            "-v", f"{self.name}:/var/lib/postgresql/data",
            "-v", f"{init}:/docker-entrypoint-initdb.d:ro",
            "-v", f"{secret}:/run/secrets/postgres-password:ro",
            *[f"--env={k}={v}" for k, v in settings.items()],
            IMAGE,
        ]  # fmt: skip

    def start(self) -> "Postgres":
        docker(*self.args)
        return self

    def ready(self) -> bool:
        if not self.state()["running"]:
            raise RuntimeError(f"{self.name} exited:\n{all_logs(self.name)[-3000:]}")
        # Over TCP: while the init scripts run, the server listens on its socket only.
        check = ["exec", self.name, "pg_isready", "-h", "127.0.0.1", "-U", "course", "-d", "runs"]
        return docker(*check, check=False).endswith("accepting connections")

    def wait_ready(self) -> None:
        wait_for(self.ready, timeout=120, interval=0.5, what=f"{self.name} accepting connections")

    def dsn(self, user="course", password=PASSWORD) -> str:
        port = docker("port", self.name, "5432/tcp").splitlines()[0].rsplit(":", 1)[1]
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=port, user=user, password=password, dbname="runs"
        )

    def state(self) -> dict:
        exit_code = docker("inspect", "-f", "{{.State.ExitCode}} {{.State.Running}}", self.name)
        code, running = exit_code.split()
        return {"exit_code": int(code), "running": running == "true"}

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)
        docker("volume", "rm", "-f", self.name, check=False)


def all_logs(name: str) -> str:
    """What the container printed, both streams (the server logs to stderr)."""
    done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@pytest.fixture
def postgres(tmp_path, request):
    server = Postgres(tmp_path, POSTGRES_PASSWORD_FILE="/run/secrets/postgres-password")
    try:
        yield server.start()
    finally:
        if getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
            print(f"--- docker logs {server.name} ---\n{all_logs(server.name)[-6000:]}")
        server.remove()


def test_the_image_stops_with_sigint_and_keeps_its_data_in_a_volume():
    config = docker("image", "inspect", "-f", "{{json .Config}}", IMAGE)
    assert '"StopSignal":"SIGINT"' in config
    assert '"/var/lib/postgresql/data":{}' in config and '"5432/tcp":{}' in config


def test_first_start_runs_the_init_scripts_and_takes_the_password_from_a_file(postgres):
    postgres.wait_ready()
    with psycopg.connect(postgres.dsn(), connect_timeout=10) as connection:
        assert connection.execute("SELECT note FROM seeded").fetchall() == [("init",)]
        assert connection.execute("SELECT current_user, current_database()").fetchone() == (
            "course",
            "runs",
        )
    with psycopg.connect(postgres.dsn("agent", "agent-pw"), connect_timeout=10) as connection:
        assert connection.execute("SELECT count(*) FROM seeded").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(password="wrong"), connect_timeout=10)


def test_restart_sigterm_and_kill_keep_the_data_and_init_runs_once(postgres):
    postgres.wait_ready()
    with psycopg.connect(postgres.dsn(), connect_timeout=10, autocommit=True) as connection:
        connection.execute("CREATE TABLE runs (id text PRIMARY KEY)")
        connection.execute("INSERT INTO runs VALUES ('before restart')")
    docker("restart", postgres.name, timeout=120)  # STOPSIGNAL SIGINT: a fast shutdown
    postgres.wait_ready()
    logs = all_logs(postgres.name)
    assert "received fast shutdown request" in logs
    assert "not properly shut down" not in logs

    with psycopg.connect(postgres.dsn(), connect_timeout=10, autocommit=True) as connection:
        connection.execute("INSERT INTO runs VALUES ('before sigterm')")
    docker(
        "kill", "-s", "TERM", postgres.name
    )  # no client connected: a smart shutdown ends at once
    wait_for(lambda: not postgres.state()["running"], timeout=60, what="the container to exit")
    assert postgres.state()["exit_code"] == 0
    assert "received smart shutdown request" in all_logs(postgres.name)
    docker("start", postgres.name)
    postgres.wait_ready()
    assert "not properly shut down" not in all_logs(postgres.name)

    with psycopg.connect(postgres.dsn(), connect_timeout=10, autocommit=True) as connection:
        connection.execute("INSERT INTO runs VALUES ('before kill')")
    docker("kill", postgres.name)  # SIGKILL: the server recovers from its WAL on the next start
    docker("start", postgres.name)
    postgres.wait_ready()
    logs = all_logs(postgres.name)
    assert "not properly shut down" in logs
    assert logs.count("running /docker-entrypoint-initdb.d/01-schema.sql") == 1
    with psycopg.connect(postgres.dsn(), connect_timeout=10) as connection:
        rows = connection.execute("SELECT id FROM runs ORDER BY id").fetchall()
        seeded = connection.execute("SELECT count(*) FROM seeded").fetchone()
    assert rows == [("before kill",), ("before restart",), ("before sigterm",)]
    assert seeded == (1,)


def test_without_a_password_the_first_start_fails_and_says_why(tmp_path):
    server = Postgres(tmp_path)  # neither POSTGRES_PASSWORD nor POSTGRES_PASSWORD_FILE
    try:
        server.start()
        wait_for(lambda: not server.state()["running"], timeout=60, what="the container to exit")
        assert server.state()["exit_code"] == 1
        assert "POSTGRES_PASSWORD" in all_logs(server.name)
    finally:
        server.remove()
