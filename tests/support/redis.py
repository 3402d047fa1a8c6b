"""A real redis-server on loopback: what the cache, rate-limit and lesson 05 tests run against."""

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from redis.backoff import NoBackoff
from redis.retry import Retry

from support.commands import require_command
from support.loopback import LoopbackServer
from support.ports import free_port


def one_try() -> Retry:
    """For a client whose login is meant to be refused: redis-py retries a refused login (its
    AuthenticationError is a ConnectionError) with backoff, about 4 s before it raises."""
    return Retry(NoBackoff(), 0)


class RedisServer(LoopbackServer):
    """`redis-server` on 127.0.0.1; `restart()` brings it back on the same port and data dir."""

    name = "redis-server"
    start_timeout = 10

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        dir=None,
        password=None,
        args: list[str] = (),
    ):
        self.binary = require_command("redis-server", "redis-server")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendonly = appendonly
        self.password = password  # requirepass; `url` stays without it
        self.args = list(args)  # more of redis-server's arguments (users, for one)
        self.dir = Path(dir) if dir else Path(tempfile.mkdtemp(prefix="redis-"))
        self.made_dir = dir is None  # removed on the way out (a stop alone keeps it: restarts)

    def _launch(self) -> subprocess.Popen:
        return subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             *(["--requirepass", self.password] if self.password else []), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(self._auth() + b"PING\r\n")
                reply = s.recv(64)
                return b"+PONG" in reply or reply.startswith(b"-NOAUTH")  # up, if locked
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """One command in Redis's inline protocol (no client library needed): the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(self._auth() + " ".join(words).encode() + b"\r\n")
            reply = s.recv(4096)
            return reply.removeprefix(b"+OK\r\n") if self.password else reply

    def _auth(self) -> bytes:
        return f"AUTH {self.password}\r\n".encode() if self.password else b""

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung Redis)."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def __exit__(self, *exc) -> None:
        try:
            super().__exit__(*exc)
        finally:
            if self.made_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def stop(self) -> None:
        if self.running():
            self.thaw()
            self.process.terminate()
            self.process.wait(10)
