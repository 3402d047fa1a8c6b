"""Where a system command is (nginx, redis-server, wrk...), found as make's preflight finds it.

scripts/find-command.sh is the one place that says where to look: PATH, then /usr/local/sbin,
/usr/sbin and /sbin, which Debian leaves off a normal user's PATH, then /usr/lib/postgresql/N/bin
(Debian's PostgreSQL). `make test` has checked with it that the command is there
(scripts/ensure-command.sh), so a test finds what make found.
"""

import functools
import subprocess
from pathlib import Path

FIND_COMMAND = Path(__file__).resolve().parents[1] / "scripts" / "find-command.sh"


@functools.cache
def find_command(name: str) -> str | None:
    """The command's path, or None when it is not installed."""
    found = subprocess.run(
        ["bash", str(FIND_COMMAND), name], capture_output=True, text=True, timeout=10
    )
    return found.stdout.strip() or None


def require_command(name: str, package: str, make_target: str = "make test") -> str:
    """The command's path; a RuntimeError that says how to get it when it is missing."""
    path = find_command(name)
    if path is None:
        raise RuntimeError(
            f"{name} is not installed: `{make_target}` checks for it and says how to install it "
            f"(Debian: apt-get install {package})"
        )
    return path
