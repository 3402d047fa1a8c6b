"""Lesson 08, going further: what the Docker guard lets through for each caller, and nothing else.

GUARD_POLICY names the caller the guard stands in front of:
- `tools`: the gateway's launcher (lesson08/launcher.py), starting the catalog's tool servers
  (and joining the one GUARD_SERVER_NETWORKS names to its one more network);
- `sandbox`: lesson 04's SandboxRunner (research-agent/research_agent/sandbox*.py),
  behind the python server.

A policy is a list of routes (method, path, the query parameters allowed) and the one create body
its caller sends, as a template: every field and every value, with a few slots (an image of the
catalog, a uid of the sandbox's range, a limit up to a maximum) that have a check of their own. A
request passes only on a route, at the API version the guard pinned, with no body unless it is a
create, and a create only if its body is the template exactly. Docker reads JSON field names in
any case (`binds` is read as `Binds`) and decodes both of two equal keys into one field (a second
`HostConfig` adds to the first), so a body with duplicate or case-variant keys, at any level, is
refused before it is compared; Docker then gets the guard's own encoding of what was checked.
"""

import copy
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl

from pydantic_settings import BaseSettings

MIN_API_VERSION = (1, 41)  # Engine 20.10: the bodies below are what the Docker SDK sends at it
ID = r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"  # a container's id or name
NET = r"(?P<net>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"  # a network's name
SERVER_LABEL = "lesson08.server"  # the catalog server a launcher's container runs
INT, BOOL, FALSE = r"-?[0-9]{1,12}", r"0|1|True|False", r"0|False"


class Settings(BaseSettings):
    GUARD_HOST: str = "0.0.0.0"
    GUARD_PORT: int = 2375
    GUARD_DOCKER_SOCKET: str = "/var/run/docker.sock"
    GUARD_POLICY: Literal["tools", "sandbox"] = "tools"
    GUARD_OWNER: str = "lesson08"  # the owner label's value on every container it allows
    GUARD_IMAGES: str = "lesson08-notes"  # comma-separated: the images it may create
    # tools: the one network a tool server joins, and the largest limits a catalog entry may set.
    GUARD_NETWORK: str = "lesson08_tools"
    # tools: the one more network a catalog server may be joined to once started, as
    # "server=network,...": the python server and its sandbox guard have a network of their own.
    GUARD_SERVER_NETWORKS: str = ""
    GUARD_MAX_MEMORY: int = 512 * 1024 * 1024
    GUARD_MAX_PIDS: int = 256
    GUARD_MAX_NANO_CPUS: int = 1_000_000_000
    # sandbox: the runtime SANDBOX_RUNTIME names ("runsc"), if any; the longest a sandbox's clock,
    # an event stream or an attached container may run.
    GUARD_RUNTIME: str = ""
    GUARD_MAX_SECONDS: int = 300
    # Event streams and attached containers open at once: a sandbox run holds one of each.
    GUARD_MAX_STREAMS: int = 16
    # sandbox: also lesson 10's kept sandboxes (research_agent/durable/idempotent.py): named by
    # their run's idempotency key, kept after they exit with a bounded copy of their output, and
    # read back (inspect, wait, logs) by whichever replica continues the run.
    GUARD_KEPT_SANDBOXES: bool = False

    def images(self) -> set[str]:
        return {i.strip() for i in self.GUARD_IMAGES.split(",") if i.strip()}

    def server_of_network(self) -> dict[str, str]:
        """GUARD_SERVER_NETWORKS as network -> the one server that may join it."""
        pairs = [item.split("=", 1) for item in self.GUARD_SERVER_NETWORKS.split(",") if item]
        return {network.strip(): server.strip() for server, network in pairs}


class Refused(Exception):
    """Why a request is not sent to Docker."""

    def __init__(self, why: str, status: int = 403):
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Slot:
    """A value of the template left to the caller, within a check that sees the whole body."""

    what: str
    ok: Callable[[Any, dict], bool]


class Route(NamedTuple):
    method: str
    path: str  # {id}: a container, which must be the owner's; {net}: a network
    kind: str  # plain, own, wait, create, join, list, info, events or upgrade
    params: dict[str, str] = {}  # the query parameters allowed, each with its pattern


@dataclass(frozen=True)
class Policy:
    caller: str
    owner_label: str
    routes: list[Route]
    create: dict  # the template
    name: Callable[[dict], str | None]  # the create's ?name=, given the body
    # Another create the caller may send, with its own name: lesson 10's kept sandbox.
    other: tuple[dict, Callable[[dict], str | None]] | None = None


@dataclass(frozen=True)
class Plan:
    """What the guard sends Docker: `kind` is plain, info, stream (events) or upgrade (attach).
    With `container` set, the guard first checks it is the owner's and puts its id for {id}."""

    kind: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    container: str | None = None
    server: str | None = None  # the container must also run this catalog server

    def at(self, full_id: str) -> "Plan":
        params = {k: v.replace("{id}", full_id) for k, v in self.params.items()}
        body = self.body.replace(b"{id}", full_id.encode())  # a connect names the container
        path = self.path.replace("{id}", full_id)
        return replace(self, path=path, params=params, body=body, container=None, server=None)


def strict_json(raw: bytes | str) -> Any:
    """JSON as Docker reads it, or Refused where Docker and this file could read it differently."""

    def pairs(items: list[tuple[str, Any]]) -> dict:
        seen: dict[str, str] = {}
        for key, _ in items:  # casefold: Go also folds ſ to s and the Kelvin sign to k
            if key.casefold() in seen:
                raise Refused(f"the keys {seen[key.casefold()]!r} and {key!r} are one to Docker")
            seen[key.casefold()] = key
        return dict(items)

    def constant(name: str):
        raise Refused(f"{name} is not JSON")

    try:
        text = raw.decode() if isinstance(raw, bytes) else raw
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except ValueError as exc:  # not UTF-8, not JSON
        raise Refused(f"not strict JSON ({exc})") from None


def mismatches(template: Any, value: Any, body: dict, where: str = "body") -> list[str]:
    """How `value` differs from `template`: every field there, no other, every value equal."""
    if isinstance(template, Slot):
        try:
            return [] if template.ok(value, body) else [f"{where} must be {template.what}"]
        except (LookupError, TypeError, ValueError, AttributeError):
            return [f"{where} must be {template.what}"]
    if isinstance(template, dict) and isinstance(value, dict):
        found = [f"{where}.{k} is never sent" for k in value if k not in template]
        found += [f"{where}.{k} is missing" for k in template if k not in value]
        for key in template.keys() & value.keys():
            found += mismatches(template[key], value[key], body, f"{where}.{key}")
        return found
    if isinstance(template, list) and isinstance(value, list) and len(template) == len(value):
        pairs = enumerate(zip(template, value, strict=True))
        return [m for i, (t, v) in pairs for m in mismatches(t, v, body, f"{where}[{i}]")]
    if type(value) is type(template) and value == template:  # so true is not 1
        return []
    return [f"{where} must be {json.dumps(template, default=lambda slot: slot.what)[:60]}"]


def whole(low: int, high: int) -> Slot:
    return Slot(
        f"a whole number from {low} to {high}", lambda v, b: type(v) is int and low <= v <= high
    )


def text(pattern: str, what: str) -> Slot:
    return Slot(what, lambda v, b: isinstance(v, str) and re.fullmatch(pattern, v) is not None)


def same_as(*where: str | int) -> Slot:
    def ok(value: Any, body: dict) -> bool:
        for step in where:
            body = body[step]
        return type(value) is type(body) and value == body

    return Slot(".".join(map(str, where)), ok)


def one_of(values: set[str]) -> Slot:
    return Slot(f"one of {sorted(values)}", lambda v, b: v in values)


PING = [Route("GET", "/_ping", "plain"), Route("HEAD", "/_ping", "plain")]
VERSION = Route("GET", "/version", "plain")
LIST_PARAMS = {"limit": INT, "all": BOOL, "size": FALSE, "trunc_cmd": BOOL, "filters": ".*"}
LIST = Route("GET", "/containers/json", "list", LIST_PARAMS)
REMOVE = Route("DELETE", "/containers/{id}", "own", {"v": BOOL, "link": FALSE, "force": BOOL})
SERVER_NAME = r"[a-z][a-z0-9-]{0,30}"  # a catalog entry's name


def tools_policy(s: Settings) -> Policy:
    """What DockerLauncher.run_kwargs is on the wire (the Docker SDK's create body), and the calls
    the launcher makes: start, inspect, list and remove its containers."""
    create = {
        "User": "65534:65534",
        **dict.fromkeys(["Tty", "OpenStdin", "StdinOnce"], False),
        **dict.fromkeys(["AttachStdin", "AttachStdout", "AttachStderr"], False),
        "Env": Slot(
            "up to 64 KEY=value strings",
            lambda v, b: (
                type(v) is list
                and len(v) <= 64
                and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.{0,4096}", e) for e in v)
            ),
        ),
        "Image": one_of(s.images()),
        "NetworkDisabled": False,
        "HostConfig": {
            "Memory": whole(1, s.GUARD_MAX_MEMORY),
            "MemorySwap": same_as("HostConfig", "Memory"),  # no swap beyond it
            "ReadonlyRootfs": True,
            "NetworkMode": s.GUARD_NETWORK,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Tmpfs": {"/tmp": "rw,noexec,nosuid,size=16m"},
            "PidsLimit": whole(1, s.GUARD_MAX_PIDS),
            "NanoCpus": whole(1, s.GUARD_MAX_NANO_CPUS),
        },
        "NetworkingConfig": {s.GUARD_NETWORK: None},
        "Labels": {
            SERVER_LABEL: text(SERVER_NAME, "a catalog server's name"),
            "lesson08.owner": s.GUARD_OWNER,
        },
    }
    routes = [
        *PING,
        VERSION,
        Route("POST", "/containers/create", "create", {"name": ".*"}),
        Route("GET", "/containers/{id}/json", "own"),
        Route("POST", "/containers/{id}/start", "own"),
        Route("POST", "/containers/{id}/stop", "own", {"t": INT}),
        Route("POST", "/containers/{id}/kill", "own", {"signal": "[A-Z0-9]{1,12}"}),
        Route("POST", "/containers/{id}/wait", "own", {"condition": "not-running|next-exit"}),
        # DockerLauncher._start: the server GUARD_SERVER_NETWORKS names, to its one more network.
        Route("POST", "/networks/{net}/connect", "join"),
        REMOVE,
        LIST,
    ]

    def name(body: dict) -> str:  # the owner, then the server it runs
        return f"{s.GUARD_OWNER}-{body['Labels'][SERVER_LABEL]}"

    return Policy("launcher", "lesson08.owner", routes, create, name)


def sandbox_policy(s: Settings) -> Policy:
    """What SandboxRunner.create is on the wire, and the calls a run, the pool, the sweep and the
    exit watch make (research-agent/research_agent/sandbox*.py)."""
    from docker.utils import parse_bytes

    from research_agent import LABEL, MASKED_PATHS, SECCOMP_PROFILE, WATCHDOG, SandboxConfig

    c, most = SandboxConfig(), s.GUARD_MAX_SECONDS  # the limits no SANDBOX_* variable changes
    uids = range(c.uid_base, c.uid_base + c.uid_count)
    pair = re.compile(r"([0-9]{1,10}):\1")  # each run its own uid (research_agent/settings.py)
    create = {
        "User": Slot(
            f"uid:uid, uid from {uids.start} to {uids.stop - 1}",
            lambda v, b: pair.fullmatch(v) is not None and int(v.split(":")[0]) in uids,
        ),
        "Tty": False,
        **dict.fromkeys(["OpenStdin", "StdinOnce"], True),
        **dict.fromkeys(["AttachStdin", "AttachStdout", "AttachStderr"], True),
        # PID 1 is the runner's watchdog (research_agent/sandbox/watchdog.py), with its idle limit
        # in seconds.
        "Cmd": [
            "python",
            "-I",
            "-c",
            WATCHDOG,
            Slot(
                f"seconds, at most {most}",
                lambda v, b: re.fullmatch(r"[0-9]{1,4}(\.[0-9]{1,6})?", v) and 0 < float(v) <= most,
            ),
        ],
        "Image": one_of(s.images()),
        "NetworkDisabled": False,
        "HostConfig": {
            "Memory": parse_bytes(c.memory),
            "MemorySwap": parse_bytes(c.memory),
            "ReadonlyRootfs": True,
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges", f"seccomp={SECCOMP_PROFILE}"],
            "Ulimits": [
                {
                    "Name": "cpu",
                    "Soft": whole(1, most),
                    "Hard": same_as("HostConfig", "Ulimits", 0, "Soft"),
                }
            ],
            "LogConfig": {"Type": "none", "Config": {}},
            "Tmpfs": {"/tmp": f"rw,noexec,nosuid,nodev,size={c.tmp_size}"},
            "PidsLimit": c.pids_for(s.GUARD_RUNTIME),  # gVisor's own threads count there too
            "AutoRemove": True,
            "Init": False,
            "NanoCpus": int(c.cpus * 1e9),
            "MaskedPaths": MASKED_PATHS,
            **({"Runtime": s.GUARD_RUNTIME} if s.GUARD_RUNTIME else {}),
        },
        "Labels": {
            f"{LABEL}.owner": s.GUARD_OWNER,
            f"{LABEL}.request-id": text(r"[ -~]{1,200}", "a request id"),
            f"{LABEL}.expires": text(r"[0-9]{1,12}", "a time in seconds"),
        },
    }
    routes = [
        *PING,
        VERSION,
        Route("GET", "/info", "info"),
        Route("POST", "/containers/create", "create"),
        Route(
            "POST",
            "/containers/{id}/attach",
            "upgrade",
            dict.fromkeys(["stdin", "stdout", "stderr", "stream"], "1"),
        ),
        Route("POST", "/containers/{id}/start", "own"),
        Route("POST", "/containers/{id}/kill", "own"),
        REMOVE,
        LIST,
        Route("GET", "/events", "events", {"since": INT, "until": INT, "filters": ".*"}),
    ]
    if not s.GUARD_KEPT_SANDBOXES:
        return Policy("sandbox runner", f"{LABEL}.owner", routes, create, lambda body: None)
    # Lesson 10's KeyedSandbox.kept: the same container, named by its key (a second create of
    # the name fails: the code starts once), kept after it exits with 1 MB of its output.
    kept = copy.deepcopy(create)
    kept["HostConfig"]["AutoRemove"] = False
    kept["HostConfig"]["LogConfig"] = {
        "Type": "json-file",
        "Config": {"max-size": "1m", "max-file": "1"},
    }
    kept["Labels"][f"{LABEL}.key"] = text(r"agent-sandbox-[0-9a-f]{32}", "agent-sandbox-<key>")
    named = Route("POST", "/containers/create", "create", {"name": ".*"})
    routes = [named if route.kind == "create" else route for route in routes]
    routes += [
        Route("GET", "/containers/{id}/json", "own"),
        Route("POST", "/containers/{id}/wait", "wait", {"condition": "not-running|removed"}),
        Route(
            "GET",
            "/containers/{id}/logs",
            "own",
            {"stdout": "0|1", "stderr": "0|1", "timestamps": "0", "follow": "0", "tail": "all"},
        ),
    ]
    return Policy(
        "sandbox runner",
        f"{LABEL}.owner",
        routes,
        create,
        lambda body: None,
        other=(kept, lambda body: body["Labels"][f"{LABEL}.key"]),
    )


def policy_for(s: Settings) -> Policy:
    return tools_policy(s) if s.GUARD_POLICY == "tools" else sandbox_policy(s)


def plan(policy: Policy, s: Settings, api: str, method: str, target: str, body: bytes) -> Plan:
    """What Docker gets for `method target` with `body`, or Refused."""
    path, _, query = target.partition("?")
    params: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in params:
            raise Refused(f"the parameter {key[:40]!r} twice")
        params[key] = value
    version = re.match(r"/v([0-9]{1,3}\.[0-9]{1,3})(?=/)", path)
    path = path[version.end() :] if version else path
    if version[1] != api if version else not route_of([*PING, VERSION], method, path):
        raise Refused(f"API version {version[1] if version else 'none'}: only {api} is forwarded")
    route, match = route_of(policy.routes, method, path) or (None, None)
    if route is None:
        raise Refused(f"{method} {path[:80]} is not something the {policy.caller} asks")
    for key, value in params.items():
        if key not in route.params or not re.fullmatch(route.params[key], value):
            raise Refused(f"{key[:40]}={value[:40]} on {method} {route.path}")
    if body and route.kind not in ("create", "join"):  # Docker 20.10 applies a start's HostConfig
        raise Refused(f"{method} {route.path} carries no body")
    upstream = (f"/v{api}" if version else "") + route.path
    container = match.groupdict().get("id")
    if route.kind == "create":
        return Plan("plain", upstream, params, create_body(policy, params.get("name"), body))
    if route.kind == "join":
        return join(s, upstream, match["net"], body)
    if route.kind == "list":
        params["filters"] = owner_filter(policy, s, params.get("filters"))
    if route.kind == "events":
        container, params["filters"] = one_container_events(s, params)
    kind = {"own": "plain", "list": "plain", "events": "stream"}.get(route.kind, route.kind)
    # "wait": plain, but answered only once the container has exited (bounded by its watchdog).
    return Plan(kind, upstream, params, container=container)


def route_of(routes: list[Route], method: str, path: str) -> tuple[Route, re.Match] | None:
    for route in routes:
        match = re.fullmatch(route.path.replace("{id}", ID).replace("{net}", NET), path)
        if match and route.method == method:
            return route, match
    return None


def create_body(policy: Policy, name: str | None, raw: bytes) -> bytes:
    """The body Docker gets for a create: the caller's, if it is a template exactly (with the
    name that goes with it), re-encoded (Docker never reads the caller's bytes)."""
    body = strict_json(raw)
    found = []
    for template, named in [(policy.create, policy.name), *filter(None, [policy.other])]:
        problems = mismatches(template, body, body) if isinstance(body, dict) else ["an object"]
        if not problems and name != named(body):
            problems = [f"the name {name!r} is not {named(body)!r}"]
        if not problems:
            return json.dumps(body).encode()
        found.append(problems)
    problems = min(found, key=len)  # the template it came closest to
    raise Refused(f"not the {policy.caller}'s create: " + "; ".join(sorted(problems)[:6]))


def join(s: Settings, upstream: str, network: str, raw: bytes) -> Plan:
    """A connect of one container to a network: the network GUARD_SERVER_NETWORKS names, the
    container the owner's and running that network's server (the guard checks it), and the body
    the Docker SDK sends for a plain connect, nothing more (no address, alias or link)."""
    server = s.server_of_network().get(network)
    if server is None:
        raise Refused(f"no catalog server joins the network {network[:80]!r}")
    body = strict_json(raw)
    if not isinstance(body, dict) or set(body) != {"Container", "EndpointConfig"}:
        raise Refused("a connect's body is {Container, EndpointConfig: {}}")
    container = body["Container"]
    if body["EndpointConfig"] != {} or not isinstance(container, str):
        raise Refused("a connect's body is {Container, EndpointConfig: {}}")
    if not re.fullmatch(ID, container):
        raise Refused("a connect names a container")
    sent = json.dumps({"Container": "{id}", "EndpointConfig": {}}).encode()
    path = upstream.replace("{net}", network)
    return Plan("plain", path, {}, sent, container=container, server=server)


def owner_filter(policy: Policy, s: Settings, filters: str | None) -> str:
    """A list's filters, narrowed to the owner's containers: label filters only, one of them on
    the owner label (the sweep asks for the label's key alone, any owner's: it gets this one's)."""
    mine = f"{policy.owner_label}={s.GUARD_OWNER}"
    wanted = strict_json(filters or "{}")
    labels = wanted.get("label") if isinstance(wanted, dict) and set(wanted) == {"label"} else 0
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise Refused(f"a list filters on labels, label={mine} among them")
    others = [x for x in labels if x.split("=")[0] != policy.owner_label]
    if set(labels) - set(others) not in ({mine}, {policy.owner_label}):
        raise Refused(f"a list filters on labels, label={mine} among them")
    return json.dumps({"label": [*others, mine]})


def one_container_events(s: Settings, params: dict[str, str]) -> tuple[str, str]:
    """The exit watch's events: one container's oom, die and destroy, ending within the bound.
    Returns the container, to be checked, and the filters for Docker."""
    why = f"events of one container (oom, die, destroy) until at most {s.GUARD_MAX_SECONDS} s ahead"
    if set(params) != {"since", "until", "filters"}:
        raise Refused(why)
    if int(params["until"]) > time.time() + s.GUARD_MAX_SECONDS:
        raise Refused(why)
    filters = strict_json(params["filters"])
    if not isinstance(filters, dict) or set(filters) != {"container", "event"}:
        raise Refused(why)
    containers, events = filters["container"], filters["event"]
    if not isinstance(containers, list) or len(containers) != 1:
        raise Refused(why)
    if not isinstance(containers[0], str) or not re.fullmatch(ID, containers[0]):
        raise Refused(why)
    if not isinstance(events, list) or not events or set(events) - {"oom", "die", "destroy"}:
        raise Refused(why)
    return containers[0], json.dumps({"container": ["{id}"], "event": events})
