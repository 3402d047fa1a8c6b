"""PID 1 of every sandbox container: waits for its run, runs the program, ends it at its deadline.

The runner passes this file's text to `python -I -c` with the idle limit in seconds, so the image
needs no copy of it. A container may be started ahead (the runner's pool) and wait for its run: it
runs nothing of a run until the first line of stdin arrives, the run's deadline in seconds (and a
token, below), and that line starts the run's clock. The program follows on stdin. No line within
the idle limit: the container ends unused. It keeps the deadline when nothing outside does: if the
API that started the container is killed (kill -9, OOM, a stop that ran out of time), the container
still ends here.

The interpreter that will run the program starts at once, before the run comes, and waits on a
pipe for the program: its start-up (about half of a short run's time on half a CPU) is paid while
the container waits, not by the run. It has read nothing and run nothing when the run comes; the
program goes to it through the pipe, and its CPU limit is set then, from the run's deadline.

When the program ends, every other process of the container is killed, and the exit code goes to
the runner after the program's last output, on stdout and on stderr, behind the token the first
line carried, with whether the kernel's OOM killer struck in the container during the run (its
cgroup's own `oom_kill` count, which the engine's `oom` event does not always report on a busy
machine): the runner answers then, without waiting for the container to exit. The program never
sees the token (it is read here, byte by byte, and this process is not dumpable), so it cannot end
its own run early with a made-up exit code.

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
# Where the container's cgroup counts its OOM kills: cgroup v2, then v1.
OOM_COUNTS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills():
    """How many processes the OOM killer has killed in this container; None where no cgroup file
    says (gVisor's)."""
    for path in OOM_COUNTS:
        with contextlib.suppress(OSError, ValueError), open(path) as counts:
            for line in counts:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


def main(idle: float) -> None:
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)

    def at_deadline(signum, frame):
        # Every process of the container except this one; none if no run ever came.
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        os._exit(128 + signal.SIGKILL)

    signal.signal(signal.SIGALRM, at_deadline)
    signal.setitimer(signal.ITIMER_REAL, idle)
    # -u: what the program printed before a timeout reaches the runner, not a lost buffer. Its
    # stdin is the pipe: it reads the program from there, once the run has sent it.
    source, sink = os.pipe()
    program = os.posix_spawn(
        sys.executable,
        [sys.executable, "-I", "-u", "-"],
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, source, 0),
            (os.POSIX_SPAWN_CLOSE, source),
            (os.POSIX_SPAWN_CLOSE, sink),
        ],
    )
    os.close(source)
    line = b""
    while not line.endswith(b"\n") and len(line) < 64:  # byte by byte: the program stays unread
        byte = os.read(0, 1)
        if not byte:
            os._exit(0)  # stdin closed before a run came: nothing ran
        line += byte
    deadline, *token = line.split()
    deadline = float(deadline)
    kills = oom_kills()
    signal.setitimer(signal.ITIMER_REAL, deadline)  # the run's clock starts with its first byte
    # The run's own CPU limit, at most the container's (a pooled one was made for the default).
    cpu, hard = math.ceil(deadline), resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:
        cpu = min(cpu, hard)
    try:
        resource.prlimit(program, resource.RLIMIT_CPU, (cpu, cpu))
    except OSError:
        os.kill(program, signal.SIGKILL)  # no run without its limit
    with contextlib.suppress(BrokenPipeError):  # it ended before reading it all: its exit says why
        while chunk := os.read(0, 1 << 16):
            os.write(sink, chunk)
    os.close(sink)  # end of file: the program runs
    while True:
        pid, status = os.wait()  # orphans are reaped here too
        if pid == program:
            code = os.waitstatus_to_exitcode(status)
            code = code if code >= 0 else 128 - code  # killed by a signal: 128 + its number
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)  # what the program left running ends with it
            now = oom_kills()
            oom = int(kills is not None and now is not None and now > kills)
            if token:  # after the program's last output, on each stream: how it ended
                for stream in (1, 2):
                    with contextlib.suppress(OSError):
                        os.write(stream, b"\x00%s %d %d\n" % (token[0], code, oom))
            os._exit(code)


main(float(sys.argv[1]))
