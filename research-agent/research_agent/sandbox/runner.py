"""Run untrusted Python in a throwaway container: the container spec and one run.

Lesson 04's production API (code/lesson04/sandboxed_tools.py) and the research agent's run_python
tool import this file; lesson 04's steps (code/lesson04/step*.py) are small copies of its ideas, and
a test (tests/lesson_04/test_alike.py) holds their results equal. It imports nothing of the app but
its sandbox_* files and docker_client.py (the engine the `docker` command uses, its context
included), and nothing of LangChain. `run` blocks (every Docker SDK call is an HTTP request): call
it from a thread. The other concerns are objects of their own, each in one file, that hold a
`SandboxRunner` and call it: admission.py (`QueuedRunner.arun`: threads, a bounded queue, per-caller
caps, shutdown), sweep.py (`Sweeper`: leftovers), pool.py (`ContainerPool`: containers started
ahead) and egress.py (`EgressGateway`: the network a runner is given); parts.py puts them together.
Their settings are one class, config.py."""

import contextlib
import json
import logging
import math
import re
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Ulimit
from docker.utils.socket import frames_iter

from ..settings import SandboxConfig
from .docker_client import docker_client
from .exit import Ending, EndWatch

logger = logging.getLogger(__name__)

# Every container carries three labels: agent-sandbox.owner, .request-id and .expires.
LABEL = "agent-sandbox"
# A container this long past its timeout is a leftover (a crash, a failed removal) for sweep().
EXPIRY_GRACE_SECONDS = 60
# The container ends itself this long after its timeout, should the runner not be there to kill it.
WATCHDOG_GRACE_SECONDS = 2
# Output kept past max_output_bytes, so that the watchdog's last line fits behind a full output.
LAST_LINE_ROOM = 64

# PID 1 of each container (it runs the program and keeps the deadline) and the seccomp profile: two
# files next to this one, so the lesson and the research agent's image both have them.
_HERE = Path(__file__).resolve().parent
WATCHDOG = (_HERE / "watchdog.py").read_text()
SECCOMP_PROFILE = json.dumps(json.loads((_HERE / "seccomp.json").read_text()))
# Hidden from the program (an empty file or folder over them): Docker's own list, which setting
# any list replaces, plus what tells about the host: its kernel's command line, build options
# and type information, and its load and pressure counters.
MASKED_PATHS = [
    *["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats"],
    *["/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
    *["/proc/cmdline", "/proc/config.gz", "/sys/kernel/btf", "/sys/kernel/vmcoreinfo"],
    *["/proc/pressure", "/proc/loadavg"],
]


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    oom_killed: bool
    truncated: bool
    duration_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Attached:
    """A container's events and its attached stdin, stdout and stderr (SandboxRunner.attach)."""

    end: EndWatch
    sock: object  # the SDK's SocketIO

    def close(self) -> None:
        """Close both (again: a no-op)."""
        raw = self.sock._sock  # None once closed
        self.end.close()
        self.sock.close()
        if raw is not None:
            raw.close()  # closing the SocketIO alone leaves the socket open until collected


class SandboxError(Exception):
    """Every error the runner raises: the code did not run."""


class SandboxUnavailable(SandboxError):
    """Docker cannot be reached, or the image or runtime is missing: the code did not run."""


# Docker errors, and the connection errors the SDK passes on from requests when the daemon is gone.
DOCKER_ERRORS = (DockerException, requests.RequestException)


class Network(Protocol):
    """What a runner asks of the network its runs get (egress.py's EgressGateway): the runtime of
    a container on it, each container's options (which make the run's network), a container made
    ahead joined to its run's, a run's released, what leftovers the sweep removes, and its end."""

    @property
    def runtime(self) -> str | None: ...

    def options(self, request_id: str, made_ahead: bool) -> dict: ...

    def join(self, container, request_id: str) -> None: ...

    def release(self, container) -> None: ...

    def sweep(self, client) -> int: ...

    def close(self) -> None: ...


class SandboxRunner:
    """One fresh container per run: created with every restriction, started, fed, read, removed.

    Its containers have no network, unless it is given one: `network` (egress.py's
    EgressGateway, when the config's `egress_on`) says what a container needs to reach the allowed
    hosts, and joins a container made ahead to it when a run takes it."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        client=None,
        *,
        network: Network | None = None,
    ):
        self.config = config or SandboxConfig()
        self.network = network
        self._client = client
        self._client_lock = threading.Lock()
        self._uids: set[int] = set()  # in use by this runner's containers
        self._uids_lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client, made on first use: an API starts, and answers 503, without Docker."""
        with self._client_lock:
            if self._client is None:
                try:
                    client = docker_client(max_pool_size=2 * self.config.max_concurrent + 4)
                    runtimes = client.info().get("Runtimes", {})
                except DOCKER_ERRORS as exc:
                    raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
                for runtime in self.runtimes_needed():
                    if runtime not in runtimes:
                        raise SandboxUnavailable(
                            f"the Docker daemon offers no {runtime!r} runtime (it has: "
                            f"{', '.join(sorted(runtimes))}); see docs/04-sandboxed-tools.md"
                        )
                self._client = client
            return self._client

    def runtimes_needed(self) -> list[str]:
        """The runtimes this runner's containers use, which the daemon must offer."""
        runtime = self.network.runtime if self.network is not None else self.config.runtime
        return [runtime] if runtime else []

    def container_spec(
        self, timeout: float, request_id: str, uid: int, idle: float | None = None
    ) -> dict:
        """The container for one run of up to `timeout` s as `uid`, as create_container's
        arguments. Its watchdog waits `idle` s for the run's first line (a container made ahead
        for a run to come; by default until the run would have ended). No network, unless the
        runner has one: it names its network and what goes with it (a runtime, environment,
        mounts, labels)."""
        c = self.config
        ends = timeout + WATCHDOG_GRACE_SECONDS
        made_ahead, idle = idle is not None, ends if idle is None else idle
        net = {} if self.network is None else self.network.options(request_id, made_ahead)
        runtime = net.get("runtime") or c.runtime
        host_config = self.client.api.create_host_config(
            network_mode=net.get("network", "none"),
            read_only=True,
            tmpfs={"/tmp": f"rw,noexec,nosuid,nodev,size={c.tmp_size}"},
            mem_limit=c.memory,
            memswap_limit=c.memory,
            nano_cpus=int(c.cpus * 1e9),
            pids_limit=c.pids_for(runtime),
            # CPU seconds per process, a second limit that needs no one outside: killed past it.
            ulimits=[Ulimit(name="cpu", soft=math.ceil(ends), hard=math.ceil(ends))],
            cap_drop=["ALL"],
            security_opt=["no-new-privileges", f"seccomp={SECCOMP_PROFILE}"],
            init=False,  # whatever the daemon's default: the watchdog must be PID 1 (see its file)
            runtime=runtime,
            mounts=net.get("mounts"),
            log_config=LogConfig(type="none"),  # output is read live; no copy on the host's disk
            # The engine removes it as it exits, even if this process is gone (see exit.py).
            auto_remove=True,
        )
        host_config["MaskedPaths"] = MASKED_PATHS  # the SDK has no argument for it
        return {
            "image": c.image,
            # PID 1 is the watchdog (watchdog.py); the run's deadline, then its program,
            # arrive on stdin: no file to mount, no shell.
            "command": ["python", "-I", "-c", WATCHDOG, f"{idle:g}"],
            "stdin_open": True,
            "user": f"{uid}:{uid}",
            "environment": net.get("environment"),
            "host_config": host_config,
            "labels": {
                f"{LABEL}.owner": c.owner,
                f"{LABEL}.request-id": request_id,
                f"{LABEL}.expires": str(int(time.time() + idle + ends + EXPIRY_GRACE_SECONDS)),
                **net.get("labels", {}),
            },
        }

    def create(self, timeout: float, request_id: str, uid: int, idle: float | None = None):
        """A container, not started, for one run (container_spec's)."""
        spec = self.container_spec(timeout, request_id, uid, idle)
        try:
            return self.create_from(spec)
        except BaseException:
            if self.network is not None:  # what the network made for the run (egress.py)
                self.network.release(self.client.containers.prepare_model(self._model(spec)))
            raise

    def create_from(self, spec: dict):
        """Create the container `spec` describes; Docker's errors become SandboxUnavailable."""
        try:
            created = self.client.api.create_container(**spec)
        except ImageNotFound as exc:
            raise SandboxUnavailable(
                f"the sandbox image {self.config.image} is missing: build it with `make build`"
            ) from exc
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"cannot create a sandbox container: {exc}") from exc
        return self.client.containers.prepare_model(self._model(spec, created["Id"]))

    @staticmethod
    def _model(spec: dict, container_id: str = "") -> dict:
        """What the SDK's Container is made from: its id, and the labels it was created with."""
        return {"Id": container_id, "Config": {"Labels": dict(spec.get("labels") or {})}}

    def take_uid(self) -> int:
        """A uid no other run of this runner has; runners on one engine collide with a chance
        of about one in uid_count / (their runs at once). Give it back with free_uid."""
        with self._uids_lock:
            while True:
                uid = self.config.uid_base + secrets.randbelow(self.config.uid_count)
                if uid not in self._uids:
                    self._uids.add(uid)
                    return uid

    def free_uid(self, uid: int) -> None:
        with self._uids_lock:
            self._uids.discard(uid)

    def run(self, code: str, timeout_seconds: float | None = None, request_id: str = "-"):
        """Run `code` in a fresh container and return a RunResult. Blocks: call it from a thread.
        The container serves this run only, and is removed."""
        timeout = timeout_seconds or self.config.timeout_seconds
        uid = self.take_uid()
        try:
            container = self.create(timeout, request_id, uid)
            return self.run_in(container, code, timeout)
        finally:
            self.free_uid(uid)

    def join(self, container, request_id: str) -> None:
        """A container made ahead (with no network) joins the runner's network, if it has one, as
        a run takes it."""
        if self.network is not None:
            self.network.join(container, request_id)

    def run_in(
        self,
        container,
        code: str,
        timeout: float,
        started: bool = False,
        attached=None,
        removal=None,
    ) -> RunResult:
        """Execute in `container`, then remove it, whatever happened: here, or by `removal`
        (the pool's: after the answer is returned, off the run's path)."""
        try:
            return self.execute(container, code, timeout, started=started, attached=attached)
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"the sandbox container failed: {exc}") from exc
        finally:
            (removal or self.discard)(container)

    def discard(self, container) -> None:
        """Remove it, then what its network made for it (a run's own network, with egress)."""
        remove(container)
        if self.network is not None:
            self.network.release(container)

    def attach(self, container, within: float) -> "Attached":
        """The two connections a run needs, opened before it: the engine's events for the
        container (opened first, so no event is missed) and its stdin, stdout and stderr. A pool
        opens them when it makes the container, so a run itself makes no request to the engine."""
        end = EndWatch(self.client, container.id, within)
        try:
            sock = container.attach_socket(
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        except BaseException:
            end.close()
            raise
        return Attached(end, sock)

    def execute(
        self, container, code: str, timeout: float, started: bool = False, attached=None
    ) -> RunResult:
        """Start the container (unless `started`: its watchdog is already waiting for the first
        line), send it the code, read capped output up to the watchdog's last line, which says how
        the program ended; else (killed, out of memory, no such line) how it ended comes from the
        engine's events (it removes the container as it exits)."""
        attached = attached or self.attach(container, timeout + 60)
        end, sock = attached.end, attached.sock
        raw = sock._sock  # the SDK hands back a SocketIO; sending and half-closing need the socket
        output = {1: bytearray(), 2: bytearray()}  # stdout, stderr
        limit, flooded, timed_out = self.config.max_output_bytes, False, threading.Event()
        # The watchdog's last line on each stream: a token the program never sees, the exit code,
        # and 1 if the OOM killer struck in the container during the run.
        token = secrets.token_hex(8).encode()
        last_line = re.compile(rb"\x00" + token + rb" (\d+) ([01])\n")
        exits: dict[int, tuple[int, bool]] = {}

        def on_timeout() -> None:
            timed_out.set()
            kill(container)

        deadline = threading.Timer(timeout, on_timeout)
        # Last resort if the daemon never ends the stream after the kill: stop reading it.
        backstop = threading.Timer(timeout + 10, lambda: raw.shutdown(socket.SHUT_RDWR))
        try:
            if not started:
                container.start()
            begin = time.monotonic()
            deadline.start()
            backstop.start()
            with contextlib.suppress(OSError):  # it exited before reading stdin: exit code says why
                # The watchdog's first line, which starts its clock: the run's deadline, and the
                # token of its last line.
                raw.sendall(f"{timeout + WATCHDOG_GRACE_SECONDS:g} ".encode() + token + b"\n")
                raw.sendall(code.encode())
                raw.shutdown(socket.SHUT_WR)  # end of file on the container's stdin
            for stream, data in frames_iter(sock, tty=False):
                kept = output[stream]
                room = limit + LAST_LINE_ROOM - len(kept)
                kept += data[:room]
                if len(data) > room and not flooded:
                    # The rest would be thrown away: stop it being produced. From another thread,
                    # because a kill waits for the process, which waits for us to read its output.
                    flooded = True
                    threading.Thread(target=kill, args=(container,), daemon=True).start()
                found = last_line.search(kept, max(0, len(kept) - len(data) - LAST_LINE_ROOM))
                if found:
                    exits[stream] = (int(found[1]), found[2] == b"1")
                    del kept[found.start() :]
                if len(exits) == 2:  # all the program wrote is here: the answer needs no more
                    break
            duration_ms = (time.monotonic() - begin) * 1000  # the output ends as the program does
            code_seen, oom_seen = exits.get(1, (None, False))
            if code_seen is not None and code_seen < 128 and not (flooded or timed_out.is_set()):
                ended = Ending(code_seen, False)  # it exited by itself: no kill, no OOM
            else:
                ended = end.ending()
                # The kernel's count, read by the watchdog: the engine's `oom` event can be missing.
                ended = Ending(ended.exit_code, ended.oom_killed or oom_seen)
        finally:
            deadline.cancel()
            backstop.cancel()
            attached.close()
        truncated = flooded or any(len(kept) > limit for kept in output.values())
        return RunResult(
            stdout=output[1][:limit].decode(errors="replace"),
            stderr=output[2][:limit].decode(errors="replace"),
            exit_code=ended.exit_code,
            timed_out=timed_out.is_set(),
            oom_killed=ended.oom_killed,
            truncated=truncated,
            duration_ms=round(duration_ms, 1),
        )

    def close(self) -> None:
        """Close the Docker client, and remove the network's parts: call it once no run is going."""
        try:
            if self._client is not None:
                self._client.close()
        finally:
            if self.network is not None:
                self.network.close()


def kill(container) -> None:
    with contextlib.suppress(*DOCKER_ERRORS):  # it has already exited
        container.kill()


# How long remove() waits for a removal the engine has already begun.
REMOVAL_WAIT_SECONDS = 30


def remove(container) -> None:
    """Remove it, and return once it is gone (or removal failed): its place is free only then."""
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except APIError as exc:
        if exc.status_code != 409:  # sweep() removes it later
            logger.warning("could not remove sandbox container %s: %s", container.id[:12], exc)
            return
        # 409: the engine is removing it already (auto_remove, as it exited), and lists it until
        # it is done. Wait for that: the caller counts the container until remove() returns.
        try:
            container.wait(condition="removed", timeout=REMOVAL_WAIT_SECONDS)
        except NotFound:
            pass  # gone already
        except DOCKER_ERRORS as exc:
            logger.warning("sandbox container %s still being removed: %s", container.id[:12], exc)
    except DOCKER_ERRORS as exc:  # sweep() removes it later
        logger.warning("could not remove sandbox container %s: %s", container.id[:12], exc)
