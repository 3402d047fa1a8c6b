"""support/postgres.py: the real PostgreSQL durable-run tests stand on, checked on its own."""

import os
import re
import socket
import subprocess
from pathlib import Path

import psycopg
import pytest

from support.commands import FIND_COMMAND
from support.postgres import PostgresServer, alive

ROOT = Path(__file__).resolve().parents[2]


def server_processes(server: PostgresServer) -> list[int]:
    """The postmaster and its children, those still alive."""
    return [pid for pid in [server.process.pid, *server.children()] if alive(pid)]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def own_server():
    """A server of the test's own, to stop, kill and restart."""
    with PostgresServer() as server:
        yield server


def test_a_fresh_database_is_empty_and_takes_sql_over_loopback(postgres_dsn, postgres_server):
    with psycopg.connect(postgres_dsn) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        connection.execute("CREATE TABLE runs (id text PRIMARY KEY)")
        connection.execute("INSERT INTO runs VALUES (%s)", ("r'; DROP TABLE runs; --",))
        assert connection.execute("SELECT id FROM runs").fetchall() == [
            ("r'; DROP TABLE runs; --",)
        ]
        assert connection.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
    assert postgres_dsn.startswith(f"postgresql://postgres:{postgres_server.password}@127.0.0.1:")


def test_each_test_gets_its_own_database(postgres_server):
    first, second = postgres_server.create_database(), postgres_server.create_database()
    assert first != second
    with psycopg.connect(first) as connection:
        connection.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(second) as connection:
        assert connection.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    for dsn in (first, second):
        postgres_server.drop_database(dsn.rsplit("/", 1)[1])
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(first, connect_timeout=5)


def test_a_wrong_password_is_refused(postgres_server):
    dsn = postgres_server.dsn_for("postgres", "not-the-password", "postgres")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn, connect_timeout=5)


def test_the_server_never_runs_as_root(postgres_server):
    uids = {os.stat(f"/proc/{pid}").st_uid for pid in server_processes(postgres_server)}
    assert uids and 0 not in uids, uids
    assert uids == {os.geteuid() if os.geteuid() else postgres_server.user.pw_uid}


def test_restart_keeps_port_and_data(own_server):
    with psycopg.connect(own_server.dsn) as connection:
        connection.execute("CREATE TABLE kept (x int)")
        connection.execute("INSERT INTO kept VALUES (1)")
    port = own_server.port
    own_server.restart()
    assert own_server.port == port
    with psycopg.connect(own_server.dsn) as connection:
        assert connection.execute("SELECT x FROM kept").fetchall() == [(1,)]


def test_kill_ends_every_process_and_a_commit_survives_it(own_server):
    with psycopg.connect(own_server.dsn, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (x int)")
        connection.execute("INSERT INTO kept VALUES (42)")  # committed: acknowledged, not synced
        pids = server_processes(own_server)
        assert len(pids) > 2  # the postmaster, its helpers and this connection's backend
        own_server.kill()
    assert not any(map(alive, pids))
    assert not port_open(own_server.port)
    own_server.start()  # recovers from its WAL, as after a crash
    assert "not properly shut down" in own_server.log()
    with psycopg.connect(own_server.dsn) as connection:
        assert connection.execute("SELECT x FROM kept").fetchall() == [(42,)]


def test_stop_is_a_clean_shutdown_and_remove_leaves_nothing():
    server = PostgresServer().start()
    with psycopg.connect(server.dsn) as connection:  # a client still connected does not hold it
        pids = server_processes(server)
        server.stop()
        with pytest.raises(psycopg.OperationalError):
            connection.execute("SELECT 1")
    assert server.process.returncode == 0
    assert not any(map(alive, pids))
    assert not port_open(server.port)
    assert "database system is shut down" in server.log()
    server.remove()
    assert not server.dir.exists()


@pytest.mark.skipif(not Path("/usr/lib/postgresql").is_dir(), reason="no Debian PostgreSQL here")
def test_debians_postgresql_commands_are_found_off_every_path():
    """Debian keeps initdb and postgres in /usr/lib/postgresql/15/bin, on no user's PATH."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    for name in ("initdb", "postgres"):
        found = subprocess.run(
            ["bash", str(FIND_COMMAND), name], env=env, capture_output=True, text=True, timeout=10
        )
        assert found.returncode == 0, found.stderr
        assert re.fullmatch(rf"/usr/lib/postgresql/\d+/bin/{name}", found.stdout.strip())


def test_make_test_says_how_to_get_postgresql_when_it_is_missing(tmp_path):
    """As a user: the one apt-get line, and nothing installed; elsewhere: brew."""
    fake, sbin = tmp_path / "fake-bin", tmp_path / "sbin"
    fake.mkdir()
    sbin.mkdir()
    for name, body in (("docker", "exit 1\n"), ("apt-get", f"echo called >{tmp_path}/apt\n")):
        (fake / name).write_text("#!/bin/bash\n" + body)
        (fake / name).chmod(0o755)
    for name in ("redis-server", "nginx"):
        (sbin / name).write_text("#!/bin/bash\n")
        (sbin / name).chmod(0o755)
    make = subprocess.run(
        ["make", "--no-print-directory", "test-tools"],
        cwd=ROOT,
        env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path),
             "SYSTEM_COMMAND_DIRS": str(sbin), "ENSURE_COMMAND_UID": "1000"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert make.returncode != 0 and not (tmp_path / "apt").exists()
    assert "'initdb' is missing (the tests start a real PostgreSQL)" in make.stdout
    assert "apt-get install -y postgresql" in make.stderr
    makefile = (ROOT / "Makefile").read_text()
    assert 'initdb postgresql "the tests start a real PostgreSQL" "macOS: brew install' in makefile
