"""Lesson 05's API with its workers as local processes, for the tests of lessons 05 and 09.

ProcessWorkers has DockerWorkers' methods, each variation a local process running the same
`python -m research_agent.worker` the containers run, against the same Redis and with the same exit
codes; LiveServer runs the lesson's app under a real uvicorn in a thread. The fixtures that build
them (`workers`, `serve`) are in tests/conftest.py.
"""

import asyncio
import contextlib
import multiprocessing
import multiprocessing.forkserver
import os
import shutil
import signal
import sys
import tempfile
import threading
import traceback
import uuid
from pathlib import Path

import uvicorn

from lesson05.docker_workers import Worker
from research_agent import BUNDLED_NOTES_DIR
from support.ports import free_port
from support.waiting import wait_for

# Workers search the bundled notes only: DOCS_DIR at them is the same as no DOCS_DIR, whatever the
# environment says (a folder made per process here was left behind by every worker).
NO_DOCS = BUNDLED_NOTES_DIR


def run_worker(environment: dict[str, str], log_path: str, argv: tuple[str, ...] = ()) -> None:
    """A worker process: the environment it is given and `python -m research_agent.worker`'s
    main()."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(environment)
    from research_agent.worker import worker

    sys.exit(worker.main(list(argv)))


# Forked from a server that has imported the worker once: a process starts in milliseconds instead
# of paying the LangChain import (seconds) each time; test_worker.py runs `python -m
# research_agent.worker`.
FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(["research_agent.worker.worker"])


def start_forkserver() -> None:
    """Start the fork server now, with its preload: the installed `research_agent` package, found by
    the fork server as by any process (Python 3.11's fork server does not take the parent's
    sys.path, so a package found only through a path set at run time would fail silently there)."""
    multiprocessing.forkserver.ensure_running()


class ProcessWorkers:
    """DockerWorkers' methods, each worker a local process: the same code, Redis and exit codes."""

    def __init__(self):
        # id -> (process, run id, variation, log); a warm worker's run id is "" and its name
        # is in self.warm.
        self.processes: dict[str, tuple[multiprocessing.Process, str, int, Path]] = {}
        self.warm: dict[str, str] = {}  # id -> name
        self.environments: dict[str, dict[str, str]] = {}  # id -> what it was given
        self.lock = threading.Lock()
        self.logs_dir = Path(tempfile.mkdtemp(prefix="lesson-05-workers-"))
        self.holding = False  # hold(): each new worker is stopped as soon as it starts

    def check(self) -> None:
        pass

    def start(
        self, run_id: str, index: int, environment: dict[str, str], argv=(), warm: str = ""
    ) -> str:
        worker_id = uuid.uuid4().hex
        env = {"PATH": os.environ["PATH"], "DOCS_DIR": str(NO_DOCS), **environment}
        log = self.logs_dir / f"{worker_id}.log"
        process = FORKSERVER.Process(target=run_worker, args=(env, str(log), argv), daemon=True)
        process.start()
        if self.holding:
            # A worker that has already ended (the forkserver reaps it at once) has nothing to
            # hold: the test then sees how its run ended, as it would after resume().
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGSTOP)
        with self.lock:  # its labels with it, in one step, as `docker create` sets them
            self.processes[worker_id] = (process, run_id, index, log)
            self.environments[worker_id] = environment
            if warm:
                self.warm[worker_id] = warm
        return worker_id

    def start_warm(self, name: str, environment: dict[str, str]) -> str:
        return self.start("", -1, environment, ("--warm",), warm=name)

    def list(self) -> list:
        with self.lock:
            items = list(self.processes.items())
        return [
            Worker(
                id=wid, run_id=run_id, index=index, running=p.is_alive(), warm=self.warm.get(wid)
            )
            for wid, (p, run_id, index, _) in items
        ]

    def outcome(self, worker_id: str) -> tuple[int, bool]:
        process = self.processes[worker_id][0]
        process.join(10)
        code = process.exitcode
        return (128 - code if code < 0 else code), False  # a signal: like Docker, 128 + signal

    def logs(self, worker_id: str) -> str:
        log = self.processes[worker_id][3]
        # Killed before it wrote a line: empty, as `docker logs` is for such a container.
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def remove(self, worker_id: str) -> None:
        with self.lock:
            entry = self.processes.pop(worker_id, None)
        if entry:
            entry[0].kill()
            entry[0].join(10)

    def kill(self, run_id: str, index: int) -> None:
        """What `docker kill` does to a container: SIGKILL, the worker gets no say."""
        for process, r, i, _ in list(self.processes.values()):
            if (r, i) == (run_id, index):
                process.kill()

    def pause(self, run_id: str, index: int) -> None:
        """A hung worker, as `docker pause` makes one: it can neither answer nor time out itself."""
        for process, r, i, _ in list(self.processes.values()):
            if (r, i) == (run_id, index):
                os.kill(process.pid, signal.SIGSTOP)

    def hold(self) -> None:
        """Stop (SIGSTOP) every worker started from now on right after it starts, until resume():
        its run stays `running` for as long as a test needs, with no token delay to wait out."""
        self.holding = True

    def resume(self) -> None:
        """Let the held and paused workers go on; they finish as they would have."""
        self.holding = False
        with self.lock:
            processes = [entry[0] for entry in self.processes.values()]
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGCONT)

    def stop_all(self) -> None:
        """Every worker stopped, and their logs' folder removed (the test has read them)."""
        for worker_id in list(self.processes):
            self.remove(worker_id)
        shutil.rmtree(self.logs_dir, ignore_errors=True)


class LiveServer:
    """The app under a real uvicorn in a thread, on a free port; restartable like a process."""

    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            timeout_graceful_shutdown=1,
            proxy_headers=False,  # as the lesson's script runs it
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        wait_for(self._started, timeout=30, interval=0.05, what="the server started")

    def _run(self) -> None:
        serve = self.server.serve

        async def serve_here(*args, **kwargs):
            self.loop = asyncio.get_running_loop()  # for stop(): what is left when it hangs
            return await serve(*args, **kwargs)

        self.server.serve = serve_here
        self.server.run()

    def _started(self) -> bool:
        assert self.thread.is_alive(), "the server failed to start"
        return self.server.started

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        # One left running would go on reaping the next test's runs (same Redis, workers it
        # cannot see): it must be gone.
        if self.thread.is_alive():  # where it hangs, for whoever reads the failure
            stack = traceback.format_stack(sys._current_frames()[self.thread.ident])
            print("--- the server thread, still running ---\n" + "".join(stack))
            for task in asyncio.all_tasks(self.loop) if self.loop else ():
                print(f"--- a task left on its loop: {task!r}")
                task.print_stack(file=sys.stdout)
            if self.loop:  # not left to reap the next test's runs: its loop stops here
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)
        assert not self.thread.is_alive(), "the server did not stop within 60 s"
