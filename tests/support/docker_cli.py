"""The docker CLI, as a learner types it: what the tests check is what a command prints."""

import functools
import json
import os
import re
import shutil
import subprocess
import time


def docker(*args: str, timeout: float = 60, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@functools.cache
def compose_v2() -> bool:
    """Whether `docker compose` is Compose v2 here: the one question every test that needs it asks.

    Asked the way scripts/docker-tools.sh asks it, `docker compose version --short`, which Compose
    v2 answers with its version. A docker without the plugin fails the command, but says so in
    words that change between releases ("'compose' is not a docker command" up to 20.10, "unknown
    command" later, and `-f` after `compose` gets "unknown shorthand flag"), so only the answer
    of a working Compose counts."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(
            ["docker", "compose", "version", "--short"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    found = re.match(r"v?(\d+)\.\d+", done.stdout.strip())
    return done.returncode == 0 and found is not None and int(found[1]) >= 2


# Why a test that needs `docker compose` skips (in `make test`, whose machine may lack it).
NO_COMPOSE_V2 = "no Compose v2 here (`docker compose version`): `make docker-tools` installs it"


@functools.cache
def buildx() -> bool:
    """Whether the buildx plugin answers here. Without it, `DOCKER_BUILDKIT=1 docker build` fails
    ("BuildKit is enabled but the buildx component is missing or broken"), while the classic
    builder still builds a plain Dockerfile: a test that builds picks its builder with this."""
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "buildx", "version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def build_env() -> dict[str, str]:
    """The environment for a `docker build` that works with or without buildx: BuildKit where the
    plugin is, the classic builder where it is not (an Engine 20.10 without plugins, as a fresh
    machine has)."""
    return {**os.environ, "DOCKER_BUILDKIT": "1" if buildx() else "0"}


class ContainerStarts:
    """The containers the engine starts from now on whose labels match, followed as they happen.

    `docker events --since T --until U` alone replays only what the engine still holds, its last
    256 events, and on a busy engine (health checks are events too) a start falls out of that
    within seconds: a count read that way afterwards can miss it. So the stream is followed from
    the moment this object is made until `per()` is asked, once."""

    def __init__(self, *labels: str):
        # `--since` takes whole seconds, so the stream begins up to two seconds early, with the
        # starts of whatever ran just before (the test before this one): those are left out.
        self.since_ns = time.time_ns()
        filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
        command = ["docker", "events", "--since", str(int(time.time()) - 1), "--filter",
                   "event=start", *filters, "--format", "{{json .}}"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    def per(self, label: str) -> dict[str, int]:
        """Starts seen so far per value of `label` ("?" without it), once the engine has had a
        moment to report the last ones; the stream ends here."""
        time.sleep(1.5)
        self.close()
        out, _ = self.process.communicate(timeout=30)
        counts: dict[str, int] = {}
        for line in out.splitlines():
            event = json.loads(line)
            if event["timeNano"] < self.since_ns:
                continue
            value = event["Actor"]["Attributes"].get(label, "?")
            counts[value] = counts.get(value, 0) + 1
        return counts

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
