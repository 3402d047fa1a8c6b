"""What makes every `make bench-*` end by itself: a deadline for each run a benchmark starts, and
its own cleanup when it is stopped (SIGTERM or Ctrl+C). Standard library only.

    bounded(awaitable, seconds, what)      the awaitable's result, or RunTimedOut after `seconds`
                                           (the awaitable is cancelled)
    run_container(argv, name, input, seconds)
                                           a `docker run ... --name NAME ...` command run to its
                                           end, or, past `seconds`, killed and its container
                                           removed by name (`docker rm -f NAME`); RunTimedOut
    remove_labelled(label)                 `docker rm -f` of every container with the label
                                           (key=value): a benchmark's sweep of its own
    stopped_by_signals()                   a context manager: within it, SIGTERM (and SIGINT)
                                           raise Stopped, so the `finally` blocks and context
                                           managers of the benchmark run before it exits (143
                                           for SIGTERM, 130 for Ctrl+C, as a shell reports them)

A run past its deadline is a failed run of the benchmark: it counts it as such and goes on.
"""

import asyncio
import contextlib
import signal
import subprocess
import sys

DOCKER_TIMEOUT = 60  # s for a `docker rm` or `docker ps` of the cleanup itself


class RunTimedOut(TimeoutError):
    """A run went past its deadline (it was stopped and, if it had a container, removed)."""


class Stopped(BaseException):
    """The benchmark was told to stop (SIGTERM/SIGINT). A BaseException, like KeyboardInterrupt:
    `except Exception` in the benchmark does not swallow it, `finally` blocks run."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


async def bounded(awaitable, seconds: float, what: str = "run"):
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise RunTimedOut(f"{what} ran past its deadline of {seconds:g} s") from None


def docker(*args: str) -> subprocess.CompletedProcess:
    """A docker command of the cleanup, itself bounded; never raises for the command's failure."""
    try:
        return subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(["docker", *args], 1, "", str(exc))


async def run_container(
    argv: list[str], name: str, input: bytes = b"", seconds: float = 120
) -> tuple[int, bytes, bytes]:
    """Run a `docker run` command that names its container `name` (the caller puts
    `--name NAME` in argv) and return (exit status, stdout, stderr). Past `seconds` the client
    is killed and the container removed, whatever state it is in, then RunTimedOut is raised;
    a cancellation (Stopped, an outer deadline) removes it too."""
    if name not in argv:
        raise ValueError(f"the command does not name its container {name!r}: {argv}")
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    finished = False
    try:
        stdout, stderr = await bounded(process.communicate(input), seconds, f"container {name}")
        finished = True
        return process.returncode, stdout, stderr
    finally:
        if not finished:
            if process.returncode is None:
                process.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(process.wait(), 10)
            # The client's death does not stop the container (docker run --rm included).
            await asyncio.to_thread(docker, "rm", "-f", name)


def remove_labelled(label: str) -> int:
    """Remove every container (running or not) with the label; how many there were."""
    ids = docker("ps", "-aq", "--filter", f"label={label}").stdout.split()
    if ids:
        docker("rm", "-f", *ids)
    return len(ids)


def _raise_stopped(signum, frame):
    raise Stopped(signum)


@contextlib.contextmanager
def stopped_by_signals(signals=(signal.SIGTERM, signal.SIGINT)):
    """Within it, the signals raise Stopped in the main thread: a benchmark's `finally` blocks run
    (under asyncio.run, the running task's too, and asyncio.run cancels the others, whose
    `finally` blocks run as well). The previous handlers come back on exit."""
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main_exit(main) -> None:
    """sys.exit(main()), with main run inside stopped_by_signals: a stopped benchmark exits with
    128 + the signal's number after its cleanup, saying so on stderr."""
    try:
        with stopped_by_signals():
            code = main()
    except Stopped as stop:
        print(f"\nBenchmark {stop}: its containers and servers were cleaned up.", file=sys.stderr)
        sys.exit(stop.exit_code)
    sys.exit(code)
