"""A real PostgreSQL on loopback, from the system's packages: what durable-run tests run against.

Debian's `postgresql` package keeps `initdb` and `postgres` in /usr/lib/postgresql/N/bin, off every
PATH; scripts/find-command.sh looks there (`make test` installed the package when it was missing).
PostgreSQL refuses to run as root: as root, the server runs as the `postgres` user the package
creates (else `nobody`), in a folder that user owns.
"""

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from support.commands import require_command
from support.loopback import LoopbackServer
from support.ports import free_port
from support.waiting import wait_for

SUPERUSER = "postgres"

# A test server need not survive a power cut (no fsync: a commit is in the kernel's hands, not on
# the disk), but it must survive its own kill -9: a commit still writes its WAL before it returns
# (synchronous_commit stays on). No Unix socket: a client connects to 127.0.0.1 with the password,
# as it would to a container.
TEST_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "unix_socket_directories": "",
    "fsync": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "200",
}


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for the current user, an unprivileged one when that is root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("PostgreSQL does not run as root, and there is no postgres or nobody user")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (dead, waiting for its parent to collect it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class PostgresServer(LoopbackServer):
    """`postgres` on 127.0.0.1 in a temporary folder; `restart()` keeps its port and its data.

    `dsn` connects as the superuser; `create_database()` makes a database of its own for a test.
    """

    name = "postgres"
    start_timeout = 60

    def __init__(self, *, port: int | None = None, settings: dict[str, str] = ()):
        self.initdb = require_command("initdb", "postgresql")
        self.postgres = require_command("postgres", "postgresql")
        self.port = port or free_port()
        self.password = secrets.token_hex(16)
        self.settings = {**TEST_SETTINGS, **dict(settings)}
        self.user = server_user()
        # Its own folder under the system's temp folder, which the server's user can reach.
        self.dir = Path(tempfile.mkdtemp(prefix="postgres-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.dsn = self.dsn_for(SUPERUSER, self.password, "postgres")

    def dsn_for(self, user: str, password: str, database: str) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _as_server_user(self) -> dict:
        """Popen's arguments that drop root for the server's own user (nothing when not root)."""
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _init(self) -> None:
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        password_file = self.dir / "password"
        password_file.write_text(self.password + "\n")
        if self.user is not None:
            os.chown(password_file, self.user.pw_uid, self.user.pw_gid)
        # --no-sync: a test cluster; scram-sha-256: a client proves it knows the password.
        done = subprocess.run(
            [self.initdb, "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={password_file}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, timeout=120, **self._as_server_user(),
        )  # fmt: skip
        password_file.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> "PostgresServer":
        if not (self.data / "PG_VERSION").exists():
            self._init()
        return super().start()

    def _launch(self) -> subprocess.Popen:
        options = [f"--{name.replace('_', '-')}={value}" for name, value in self.settings.items()]
        with open(self.log_path, "ab") as log:
            if self.user is not None:
                os.chown(self.log_path, self.user.pw_uid, self.user.pw_gid)
            return subprocess.Popen(
                [self.postgres, "-D", str(self.data), "-p", str(self.port), *options],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                **self._as_server_user(),
            )  # fmt: skip

    def _give_up(self) -> None:
        self.kill()

    def _exit_details(self) -> str:
        return f":\n{self.log()}"

    def _ping(self) -> bool:
        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False  # not listening yet, or "the database system is starting up"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """A fast shutdown (SIGINT): clients are disconnected, everything is written, it exits."""
        if self.running():
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def children(self) -> list[int]:
        """The server's other processes (checkpointer, WAL writer, a backend per connection...):
        each runs in a session of its own, so a signal to the postmaster's group misses them."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = stat.read_text().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue  # it exited while we looked
            if int(ppid) == self.process.pid and alive(int(stat.parent.name)):
                found.append(int(stat.parent.name))
        return found

    def kill(self) -> None:
        """SIGKILL to the server and all its processes at once, as when its container is killed."""
        if not self.running():
            return
        self.process.send_signal(signal.SIGSTOP)  # it forks no more while we look
        children = self.children()
        for pid in [*children, self.process.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(30)
        wait_for(lambda: not any(map(alive, children)), timeout=30, what="the server's processes")

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its DSN (superuser)."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(SUPERUSER, self.password, name)

    def drop_database(self, name: str) -> None:
        """Drop it even while clients are still connected (they are disconnected)."""
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def remove(self) -> None:
        """Stop it and delete its folder: nothing is left."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.remove()
