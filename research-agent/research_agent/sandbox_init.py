"""PID 1 of every sandbox container: waits for its run, runs the program, ends it at its deadline.

The runner passes this file's text to `python -I -c` with the idle limit in seconds, so the image
needs no copy of it. A container may be started ahead (the runner's pool) and wait for its run: it
runs nothing until the first line of stdin arrives, the run's deadline in seconds, and that line
starts the run's clock. The program follows on stdin. No line within the idle limit: the container
ends unused. It keeps the deadline when nothing outside does: if the API that started the container
is killed (kill -9, OOM, a stop that ran out of time), the container still ends here.

As PID 1 of the container's own PID namespace it cannot be killed or stopped from inside (the
kernel ignores signals to it that it has no handler for), and it is made non-dumpable, so the
program cannot read or write its memory either. It also reaps orphans, the job Docker's --init
would otherwise do.
"""

import contextlib
import ctypes
import math
import os
import resource
import signal
import sys

PR_SET_DUMPABLE = 4


def main(idle: float) -> None:
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)

    def at_deadline(signum, frame):
        # Every process of the container except this one; none if no run ever came.
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        os._exit(128 + signal.SIGKILL)

    signal.signal(signal.SIGALRM, at_deadline)
    signal.setitimer(signal.ITIMER_REAL, idle)
    line = b""
    while not line.endswith(b"\n") and len(line) < 32:  # byte by byte: the program stays unread
        byte = os.read(0, 1)
        if not byte:
            os._exit(0)  # stdin closed before a run came: nothing ran
        line += byte
    deadline = float(line)
    signal.setitimer(signal.ITIMER_REAL, deadline)  # the run's clock starts with its first byte
    # The run's own CPU limit, at most the container's (a pooled one was made for the default).
    cpu, hard = math.ceil(deadline), resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        cpu = min(cpu, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    # -u: what the program printed before a timeout reaches the runner, not a lost buffer.
    program = os.spawnv(os.P_NOWAIT, sys.executable, [sys.executable, "-I", "-u", "-"])
    while True:
        pid, status = os.wait()  # orphans are reaped here too
        if pid == program:
            code = os.waitstatus_to_exitcode(status)
            os._exit(code if code >= 0 else 128 - code)  # killed by a signal: 128 + its number


main(float(sys.argv[1]))
