"""A free TCP port on the loopback interface, for the servers that tests and benchmarks start.

The port is taken from below the kernel's ephemeral range (Linux:
/proc/sys/net/ipv4/ip_local_port_range). A port from inside that range can be handed, between this
check and the server's own bind, to any outgoing connection on the machine as its source port, and
the server then fails with "Address already in use" (seen: a test's postgres, while the other
tests and Docker made thousands of connections).
"""

import functools
import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below 10000 are the ports other services are registered on (Swarm's 2377 and 7946 among them).
LOWEST = 10_000
# Where the range cannot be read (macOS, no /proc/sys): the IANA range, which the BSDs use.
DEFAULT_EPHEMERAL = (49152, 65535)


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
            return port
    raise RuntimeError(
        f"no free port in {attempts} tries between {candidates[0]} and {candidates[-1]}"
    )
