"""A real redis-server on loopback: what the cache, rate-limit and lesson 05 tests run against."""

import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.commands import require_command
from tests.support.ports import free_port
from tests.support.waiting import wait_for


class RedisServer:
    """`redis-server` on 127.0.0.1; `restart()` brings it back on the same port and data dir."""

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
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no",
             *(["--requirepass", self.password] if self.password else []), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(self._answers, timeout=10, interval=0.05, what=f"redis-server on {self.port}")
        except TimeoutError:
            self.stop()
            raise
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _answers(self) -> bool:
        if not self.running():
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")
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

    def stop(self) -> None:
        if self.running():
            self.thaw()
            self.process.terminate()
            self.process.wait(10)

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
