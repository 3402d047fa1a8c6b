"""A server run as its own process, the way a learner runs it, on a port the caller chose."""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from support import zygote


def offline_environment(**settings) -> dict[str, str]:
    """This process's environment without a real model's key or a Redis URL, plus `settings`: a
    server started here runs offline and on its own unless the caller says otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "REDIS_"))}
    env.update(PYTHONUNBUFFERED="1", **{name: str(value) for name, value in settings.items()})
    return env


def cpu_seconds(pid: int) -> float | None:
    """The CPU time a process has used so far (Linux's /proc), None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """Start `args`, wait until GET `ready_path` answers 200; `stop()` sends SIGTERM, then SIGKILL.

    The output goes to a file, never a pipe: a pipe nobody reads fills up (64 KiB) and blocks the
    server's next log line. `python script.py ...` is forked from support.zygote, its libraries
    already imported (unless fork=False); anything else runs as a subprocess.
    """

    def __init__(
        self,
        args: list[str],
        *,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        port: int,
        ready_path: str = "/health",
        log_path: str | Path | None = None,
        ready_timeout: float = 30.0,
        host: str = "127.0.0.1",
        fork: bool = True,
    ):
        self.args = [str(arg) for arg in args]
        self.cwd, self.env, self.port, self.host = cwd, env, port, host
        self.ready_path, self.ready_timeout = ready_path, ready_timeout
        # False: exec'ed, never forked (what reads /proc/PID/environ or cmdline needs the real ones)
        self.fork = fork
        self.url = f"http://{host}:{port}"
        if log_path is None:
            log_path = tempfile.mkstemp(prefix="server-", suffix=".log")[1]
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | zygote.Forked | None = None

    def start(self) -> "ServerProcess":
        self.process = zygote.start(
            self.args, self.cwd, self.env, log_path=self.log_path, fork=self.fork
        )
        began = time.monotonic()
        deadline = began + self.ready_timeout
        # On a loaded machine the imports alone can outlast the timeout: a server that used CPU in
        # the last `window` before the deadline is still starting, and gets another window
        # (3 times the timeout at most). One that idles without answering fails on time.
        window = min(5.0, self.ready_timeout / 2)
        cpu_before = None
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{' '.join(self.args)} exited with {self.process.returncode}:\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            now = time.monotonic()
            if cpu_before is None and now >= deadline - window:
                cpu_before = cpu_seconds(self.process.pid)
            if now >= deadline and now < began + 3 * self.ready_timeout and cpu_before is not None:
                cpu = cpu_seconds(self.process.pid)
                if cpu is not None and cpu > cpu_before + 0.05:
                    deadline, cpu_before = now + window, cpu
            if now >= deadline:
                self.stop(grace=5)
                raise TimeoutError(
                    f"{self.url}{self.ready_path} not 200 after {now - began:.0f} s:\n"
                    + self.tail()
                )
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, chars: int = 5000) -> str:
        return self.log_text()[-chars:]

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        return self.process.wait(timeout)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM (what `docker stop` and Ctrl+C send), SIGKILL after `grace` s; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
