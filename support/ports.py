"""A free TCP port on the loopback interface, for the servers that tests and benchmarks start.

The port is taken from below the kernel's ephemeral range (Linux:
/proc/sys/net/ipv4/ip_local_port_range). A port from inside that range can be handed, between this
check and the server's own bind, to any outgoing connection on the machine as its source port, and
the server then fails with "Address already in use" (seen: a test's postgres, while the other
tests and Docker made thousands of connections).

A port that is free when checked is released again before the caller's server binds it, a second
or more later. Each port handed out is therefore also reserved, for the processes of this user, by
a file under the temporary directory: while the file is younger than an hour no other free_port
(another test worker, a benchmark, a second CI check) hands out that port, so two of our servers
never race for one (seen: a tool server and a gateway in two test workers, "address already in
use"). The files of a process are removed when it exits.
"""

import atexit
import contextlib
import fcntl
import functools
import os
import random
import socket
import tempfile
import time
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below 10000 are the ports other services are registered on (Swarm's 2377 and 7946 among them).
LOWEST = 10_000
# Where the range cannot be read (macOS, no /proc/sys): the IANA range, which the BSDs use.
DEFAULT_EPHEMERAL = (49152, 65535)
# One directory per user: a reservation is a file named after its port, holding its process's pid.
RESERVATIONS = Path(tempfile.gettempdir()) / f"course-ports-{os.getuid()}"
# Longer than a test session keeps a server (and restarts it on the same port) in CI.
HOLD_SECONDS = 3600
_reserved: set[Path] = set()


@functools.cache  # read once a process: free_port asks on every call
def ephemeral_range() -> tuple[int, int]:
    """The kernel's source ports for outgoing connections, inclusive."""
    try:
        low, high = (int(n) for n in EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL
    return low, high


def candidate_ports() -> range:
    """The ports free_port picks from: below the ephemeral range, or above it if that is wider."""
    low, high = ephemeral_range()
    below, above = range(LOWEST, low), range(high + 1, 65536)
    return below if len(below) >= len(above) else above


def free_port(attempts: int = 200) -> int:
    """A port no socket on 127.0.0.1 holds now, chosen at random so that processes looking at the
    same time seldom pick the same one."""
    candidates = candidate_ports()
    for _ in range(attempts):
        port = random.choice(candidates)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if reserve(port):
            return port
    raise RuntimeError(
        f"no free port in {attempts} tries between {candidates[0]} and {candidates[-1]}"
    )


def reserve(port: int) -> bool:
    """Claim `port` for this process unless another of this user's processes claimed it within
    HOLD_SECONDS. The check and the claim are made under a lock on the file, so that two processes
    choosing the same port at once cannot both have it. A port this process holds is not handed
    out twice either."""
    RESERVATIONS.mkdir(mode=0o700, exist_ok=True)
    path = RESERVATIONS / str(port)
    if path in _reserved:
        return False
    pid = str(os.getpid())
    with open(path, "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # held for a read and a write: microseconds
        file.seek(0)
        holder = file.read().strip()
        age = time.time() - os.fstat(file.fileno()).st_mtime
        if holder not in ("", pid) and age < HOLD_SECONDS:
            return False
        file.seek(0)
        file.truncate()
        file.write(pid)
    if not _reserved:
        atexit.register(release_all)
    _reserved.add(path)
    return True


def release_all() -> None:
    """Remove this process's reservations (a forked child inherits the list, not the claims)."""
    pid = str(os.getpid())
    for path in _reserved:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == pid:
                path.unlink()
    _reserved.clear()
