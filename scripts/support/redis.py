"""A real redis-server on loopback: what the cache, rate-limit and lesson 05 tests run against."""

import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from support.commands import require_command
from support.ports import free_port
from support.waiting import wait_for


class RedisServer:
    """`redis-server` on 127.0.0.1; `restart()` brings it back on the same port and data dir."""

    def __init__(self, *, port: int | None = None, appendonly: bool = False, dir=None):
        self.binary = require_command("redis-server", "redis-server")
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.appendonly = appendonly
        self.dir = Path(dir) if dir else Path(tempfile.mkdtemp(prefix="redis-"))
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes" if self.appendonly else "no"],
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
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *words: str) -> bytes:
        """One command in Redis's inline protocol (no client library needed): the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(" ".join(words).encode() + b"\r\n")
            return s.recv(4096)

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
