"""`python script.py` or `python -m package.module` started from a process that has already
imported the heavy libraries.

Each of the course's servers imports LangChain, LangGraph, FastAPI and their kind before it
serves: about 3 s of CPU, paid again by every server a test starts, and the test suite starts
well over a hundred. A forkserver (the standard library's multiprocessing) imports them once per
test process and forks each server from there, so a server pays only for its own modules.

What a server sees is what `python script.py` gives it: its environment (set before any of its own
modules is imported), its working directory, `sys.argv`, the script's folder first on `sys.path`,
stdout and stderr in the log file, the script run as `__main__`, and at the end what the
interpreter does when a program ends (non-daemon threads joined, atexit handlers run, the exit code
of `SystemExit`, a traceback and 1 for an exception, death by SIGINT for an uncaught Ctrl+C).

Only libraries whose import reads nothing from the environment are preloaded, and none that a test
expects a server to load only when configured (the Docker SDK, OpenAI's client, the OpenTelemetry
exporters: tests/lesson_02/test_start_imports.py and tests/lesson_09/test_tracing.py check those in
fresh interpreters of their own).
"""

import atexit
import contextlib
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path

PRELOAD = [
    "langchain.agents",
    "langchain_core.language_models",
    "langgraph.graph",
    "fastapi",
    "uvicorn",
    "httpx",
    "pydantic_settings",
    "redis.asyncio",
    "rank_bm25",
]
# SERVER_ZYGOTE=0: every server started with subprocess, as before (to rule the forkserver out).
ENABLED = os.environ.get("SERVER_ZYGOTE", "1") != "0"

_context = None
_fresh_path: list[str] = []


def context():
    """The forkserver of this process, started (and its libraries imported) at the first use."""
    global _context
    if _context is None:
        # The forkserver gets this process's sys.path (the test runner's); a server gets the one
        # a fresh interpreter has, its script's folder in front.
        probe = [sys.executable, "-c", "import sys; print('\\n'.join(sys.path[1:]))"]
        _fresh_path[:] = subprocess.run(
            probe, capture_output=True, text=True, check=True
        ).stdout.split("\n")
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def forkable(args: list[str]) -> bool:
    """`[this python, a .py script, args...]` or `[this python, "-m", a module, args...]`: what
    the forkserver runs as `python` would."""
    return (
        ENABLED
        and len(args) >= 2
        and args[0] == sys.executable
        and (str(args[1]).endswith(".py") or (args[1] == "-m" and len(args) >= 3))
        and sys.platform == "linux"
    )


def _serve(
    args: list[str], cwd, env: dict[str, str] | None, log_path: str, path: list[str]
) -> None:
    """In the forked child: become `python script.py args...` (or `python -m module args...`),
    run it, end as python ends."""
    # A program of its own, free to start processes (multiprocessing refuses a daemon's).
    multiprocessing.current_process()._config["daemon"] = False
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=unbuffered)
    # The script's code gets the recursion room it has under `python`: the limit counts the frames
    # below it here (the forkserver's, this function's, and run_path's four on the way to the
    # script's code; tests/repo/test_support.py compares how deep both can call).
    below, frame = 4, sys._getframe()
    while frame is not None:
        below, frame = below + 1, frame.f_back
    sys.setrecursionlimit(sys.getrecursionlimit() + below)
    module = args[2] if args[1] == "-m" else None
    script = str(args[1])
    # What the interpreter puts first on sys.path: the script's folder, or for -m the working one.
    first = os.getcwd() if module else str(Path(script).resolve().parent)
    sys.argv = [str(a) for a in (args[2:] if module else args[1:])]
    sys.path[:] = [first, *(p for p in path if p)]
    code = 0
    try:
        if module:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    except KeyboardInterrupt:
        code = "sigint"
        traceback.print_exc()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        threading._shutdown()  # as the interpreter does at the end: non-daemon threads first
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    if code == "sigint":
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr, flush=True)
        code = 1
    os._exit(code & 0xFF)


class Forked:
    """The part of subprocess.Popen's interface ServerProcess uses, for a forked server."""

    def __init__(self, args: list[str], cwd, env: dict[str, str] | None, log_path: Path):
        self.args = args
        log_path.write_bytes(b"")  # there from the start, as a file Popen writes to is
        self._process = context().Process(
            target=_serve,
            args=(args, None if cwd is None else str(cwd), env, str(log_path), _fresh_path),
            # Daemonic: a server a test left running is stopped when the test process ends,
            # instead of the test process waiting for it.
            daemon=True,
        )
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(
    args: list[str], cwd=None, env: dict[str, str] | None = None, *, log_path: Path, fork=True
):
    """`args` started with its output in `log_path`: forked ready-imported when it is
    `python script.py ...` and `fork` is true (Forked), else as a subprocess (Popen); both answer
    poll, wait, send_signal, terminate, kill and pid."""
    if fork and forkable(args):
        return Forked(args, cwd, env, log_path)
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
