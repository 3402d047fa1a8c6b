"""A server process on 127.0.0.1 that tests and benchmarks start, wait for and stop the same way:
PostgreSQL (support/postgres.py) and Redis (tests/support/redis.py)."""

import subprocess

from support.waiting import wait_for


class LoopbackServer:
    """`start()` launches the process and waits until it answers; `restart()` keeps its port.

    A subclass sets `name`, `port` and `start_timeout`, and says how to `_launch()` the process,
    whether it answers yet (`_ping()`), and how to `stop()` it.
    """

    name = "server"
    port: int
    start_timeout = 10.0
    process: subprocess.Popen | None = None

    def _launch(self) -> subprocess.Popen:
        raise NotImplementedError

    def _ping(self) -> bool:
        raise NotImplementedError

    def _exit_details(self) -> str:
        """What to add to the error when the process exits before it answers."""
        return ""

    def _give_up(self) -> None:
        """After it did not answer in time: what the subclass does with it (stop, by default)."""
        self.stop()

    def stop(self) -> None:
        raise NotImplementedError

    def start(self):
        self.process = self._launch()
        try:
            wait_for(
                self._answers,
                timeout=self.start_timeout,
                interval=0.05,
                what=f"{self.name} on {self.port}",
            )
        except TimeoutError:
            self._give_up()
            raise
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _answers(self) -> bool:
        if not self.running():
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}{self._exit_details()}"
            )
        return self._ping()

    def restart(self):
        self.stop()
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
