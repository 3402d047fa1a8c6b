"""Lesson 08's Docker guard under test: the create bodies the Docker SDK puts on the wire for the
launcher and for the sandbox (captured from the SDK, never written by hand), the bodies attackers
sent from inside the gateway's container, and the guard run as a process in front of Docker."""

import copy
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from urllib.parse import urlencode

import docker
from docker.api.client import APIClient

from lesson08.catalog import ServerEntry
from lesson08.launcher import DockerLauncher
from research_agent.durable.idempotent import KeyedSandbox
from research_agent.sandbox.exit import EndWatch
from research_agent.sandbox.runner import SandboxConfig, SandboxRunner
from support.lessons import run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment

REPO = Path(__file__).resolve().parents[2]
GUARD = REPO / "code" / "lesson08" / "docker_guard.py"
API = "1.41"  # Engine 20.10's, which the Docker SDK asks for here


class Sent(Exception):
    """The request the SDK was about to send: (url, body, query parameters)."""


def sdk_sent(call: Callable[[docker.DockerClient], object], via: str = "_post") -> tuple:
    """The first request `call(client)` makes through APIClient.`via` (_post, _get), as the SDK
    would send it: (path with its version, body or None, query parameters)."""
    client = docker.DockerClient(base_url="unix:///nonexistent", version=API)

    def sent(self, url, **kwargs):
        raise Sent(url, kwargs.get("data"), kwargs.get("params") or {})

    with mock.patch.object(APIClient, via, sent):
        try:
            call(client)
        except Sent as request:
            url, data, params = request.args
            path = url.removeprefix("http+docker://localhost")
            return path, data, {k: v for k, v in params.items() if v is not None}
    raise AssertionError(f"nothing was sent through {via}")


def sdk_create(call: Callable[[docker.DockerClient], object]) -> tuple[dict, dict]:
    """The body and query parameters of the create `call(client)` makes."""
    path, data, params = sdk_sent(call)
    assert path == f"/v{API}/containers/create", path
    return json.loads(data), params


def launcher_create(owner="lesson08", network="lesson08_tools", image="lesson08-notes"):
    """What the gateway's launcher sends to start a catalog server."""
    launcher = DockerLauncher(owner=owner, network=network, internet_network=None)
    entry = ServerEntry(name="notes", image=image)
    return sdk_create(lambda client: client.containers.run(**launcher.run_kwargs(entry)))


def sandbox_create(owner="lesson-08", timeout=10.0, idle=None, runtime=None):
    """What lesson 04's SandboxRunner sends for one run (or, with `idle`, for its pool)."""
    config = SandboxConfig(owner=owner, runtime=runtime)

    def create(client):
        SandboxRunner(config, client=client).create(timeout, "req-1", config.uid_base + 7, idle)

    return sdk_create(create)


def kept_sandbox_create(owner="lesson10", key="0123456789abcdef" * 2, timeout=10.0):
    """What lesson 10's KeyedSandbox sends for the run_python call whose idempotency key is
    `key`: the sandbox, named by the key and kept after it exits."""
    config = SandboxConfig(owner=owner)

    def create(client):
        keyed = KeyedSandbox(SandboxRunner(config, client=client))
        keyed.runner.create_from(
            keyed.kept(f"agent-sandbox-{key}", timeout, "f" * 32, config.uid_base + 7)
        )

    return sdk_create(create)


def exit_watch_events(container: str, within: float = 70.0) -> str:
    """The request target of the sandbox's exit watch (research_agent/sandbox/exit.py) for
    `container`."""
    path, _, params = sdk_sent(lambda client: EndWatch(client, container, within), via="_get")
    return f"{path}?{urlencode(params)}"


@dataclass(frozen=True)
class Attack:
    """A body an attacker sent instead of the caller's own: `change` turns the compliant body
    (a dict) into the bytes sent."""

    name: str
    change: Callable[[dict], bytes]


def setting(*path_and_value) -> Callable[[dict], bytes]:
    """The compliant body with one field set (added, or changed) at `path`."""
    *path, key, value = path_and_value

    def change(body: dict) -> bytes:
        body = copy.deepcopy(body)
        where = body
        for step in path:
            where = where.setdefault(step, {})
        where[key] = value
        return json.dumps(body).encode()

    return change


def twice(key: str, first: object) -> Callable[[dict], bytes]:
    """The compliant body with `key` (top level) sent twice: first `first`, then the compliant
    value. A reader that keeps the last sees the compliant one; Docker decodes both, into one
    struct."""

    def change(body: dict) -> bytes:
        rest = json.dumps({k: v for k, v in body.items() if k != key})[1:]
        return f'{{"{key}": {json.dumps(first)}, "{key}": {json.dumps(body[key])}, {rest}'.encode()

    return change


def within_twice(outer: str, key: str | None, first: object) -> Callable[[dict], bytes]:
    """`key` (None: the first) twice inside the object `outer`: first `first`, then the
    compliant value."""

    def change(body: dict) -> bytes:
        key_ = key or next(iter(body[outer]))
        return within(body, outer, key_)

    def within(body: dict, outer: str, key: str) -> bytes:
        inner = json.dumps({k: v for k, v in body[outer].items() if k != key})[1:]
        doubled = (
            f'{{"{key}": {json.dumps(first)}, "{key}": {json.dumps(body[outer][key])}, {inner}'
        )
        rest = json.dumps({k: v for k, v in body.items() if k != outer})[1:]
        return f'{{"{outer}": {doubled}, {rest}'.encode()

    return change


def all_twins(body: dict) -> bytes:
    """The whole A1 body: every exact-case field compliant, plus lower-case twins."""
    body = copy.deepcopy(body)
    body.update(user="0:0", image="python:3.11-slim")
    body["HostConfig"].update(
        binds=["/:/host"],
        capDrop=[],
        capAdd=["SYS_ADMIN"],
        securityOpt=["seccomp=unconfined", "apparmor=unconfined"],
    )
    return json.dumps(body).encode()


# Seen from inside the gateway's container: each was created (201) by the guard before.
ATTACKS = [
    # Lower-case twins: Docker reads JSON field names in any case.
    Attack("twins-together", all_twins),
    Attack("binds", setting("HostConfig", "binds", ["/:/host"])),
    Attack("capDrop", setting("HostConfig", "capDrop", [])),
    Attack("capAdd", setting("HostConfig", "capAdd", ["SYS_ADMIN"])),
    Attack("securityOpt", setting("HostConfig", "securityOpt", ["seccomp=unconfined"])),
    Attack("user", setting("user", "0:0")),
    Attack("image", setting("image", "python:3.11-slim")),
    Attack("privileged", setting("HostConfig", "privileged", True)),
    Attack("Privileged", setting("HostConfig", "Privileged", True)),
    # Twins by Unicode case folding: Go folds ſ to s and the Kelvin sign to k.
    Attack("long-s-securityOpt", setting("HostConfig", "\u017fecurityOpt", ["seccomp=unconfined"])),
    Attack("kelvin-NetworkMode", setting("HostConfig", "Networ\u212aMode", "host")),
    # Duplicate keys: Docker decodes both into one struct.
    Attack("HostConfig-twice", twice("HostConfig", {"Binds": ["/:/host"], "Privileged": True})),
    Attack("User-twice", twice("User", "0:0")),
    Attack("Image-twice", twice("Image", "python:3.11-slim")),
    Attack("CapDrop-twice", within_twice("HostConfig", "CapDrop", [])),
    Attack("label-key-twice", within_twice("Labels", None, "someone-else")),
    # Fields the guard never looked at.
    Attack(
        "NetworkingConfig-bridge", setting("NetworkingConfig", "EndpointsConfig", {"bridge": {}})
    ),
    Attack(
        "NetworkingConfig-front",
        setting("NetworkingConfig", "EndpointsConfig", {"lesson08_front": {}}),
    ),
    Attack(
        "seccomp-unconfined",
        setting("HostConfig", "SecurityOpt", ["no-new-privileges", "seccomp=unconfined"]),
    ),
    Attack(
        "LogConfig-gelf",
        setting(
            "HostConfig",
            "LogConfig",
            {"Type": "gelf", "Config": {"gelf-address": "udp://127.0.0.1:12201"}},
        ),
    ),
    Attack(
        "LogConfig-syslog",
        setting(
            "HostConfig",
            "LogConfig",
            {"Type": "syslog", "Config": {"syslog-address": "udp://127.0.0.1:514"}},
        ),
    ),
    Attack(
        "PortBindings",
        setting(
            "HostConfig",
            "PortBindings",
            {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18000"}]},
        ),
    ),
    Attack("DeviceCgroupRules", setting("HostConfig", "DeviceCgroupRules", ["a *:* rwm"])),
    Attack("GroupAdd", setting("HostConfig", "GroupAdd", ["105"])),
    Attack("MaskedPaths-empty", setting("HostConfig", "MaskedPaths", [])),
    Attack(
        "Sysctls", setting("HostConfig", "Sysctls", {"net.ipv4.ip_unprivileged_port_start": "0"})
    ),
    Attack("CgroupParent", setting("HostConfig", "CgroupParent", "/guard-test-escape")),
    Attack("RestartPolicy", setting("HostConfig", "RestartPolicy", {"Name": "always"})),
    Attack("MemorySwap-unlimited", setting("HostConfig", "MemorySwap", -1)),
    Attack("OomKillDisable", setting("HostConfig", "OomKillDisable", True)),
    Attack("Volumes", setting("Volumes", {"/data": {}})),
    Attack("Tmpfs-exec-1g", setting("HostConfig", "Tmpfs", {"/tmp": "rw,exec,size=1g"})),
    Attack("ExtraHosts", setting("HostConfig", "ExtraHosts", ["gateway:10.0.0.1"])),
    Attack("Dns", setting("HostConfig", "Dns", ["1.1.1.1"])),
    Attack(
        "Ulimits",
        setting("HostConfig", "Ulimits", [{"Name": "nofile", "Soft": 1 << 20, "Hard": 1 << 20}]),
    ),
]
# The start that applied a HostConfig (Docker 20.10, API before 1.24), and its API version.
START_BODY = {
    "HostConfig": {
        "Binds": ["/:/host"],
        "GroupAdd": ["105"],
        "CapDrop": [],
        "ReadonlyRootfs": False,
    }
}


def guard_process(log_dir: Path, **settings) -> ServerProcess:
    """The guard as `python -m lesson08.docker_guard`, in front of this machine's Docker."""
    port = free_port()
    env = offline_environment(
        GUARD_HOST="127.0.0.1",
        GUARD_PORT=port,
        **settings,
    )
    return ServerProcess(
        [sys.executable, *run_module(GUARD)],
        env=env,
        port=port,
        ready_path="/_ping",
        log_path=log_dir / f"guard-{port}.log",
    )
