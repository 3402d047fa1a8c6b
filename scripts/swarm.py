"""Lesson 06 on Docker Swarm: deploy code/lesson06/swarm/stack.yml, wait until it serves, remove it
again.

    python scripts/swarm.py up   [--stack research-agent] [--port 8080]   # make lesson-06
    python scripts/swarm.py down [--stack research-agent]                 # make lesson-06-down

`up` initialises Swarm when the engine is not in it and writes that on the node (a label), so that
`down` leaves Swarm again only when the course joined it, and only once no service is left. The
benchmark (bench/scaleout.py) and the tests use these functions, with stacks of their own.
Every wait is bounded in time.
"""

import argparse
import hashlib
import ipaddress
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[1]
STACK_FILE = ROOT / "code" / "lesson06" / "swarm" / "stack.yml"
HAPROXY_CFG = STACK_FILE.parent / "haproxy.cfg"
# The stack's API key when the shell sets no API_KEYS: made once, kept out of git (.gitignore).
KEY_FILE = STACK_FILE.parent / "api-key"
JOINED_LABEL = (
    "containerizing-agents.swarm-joined"  # value: whether docker_gwbridge was there before
)
NAMESPACE = "com.docker.stack.namespace"


def log(message: str) -> None:
    print(f"==> {message}", flush=True)


# --- Joining and leaving Swarm --------------------------------------------------------------------


def swarm_active(client: docker.DockerClient) -> bool:
    return client.info()["Swarm"]["LocalNodeState"] == "active"


def join_swarm_if_needed(client: docker.DockerClient) -> bool:
    """Initialise a one-node Swarm unless the engine is in one already; True if this call joined."""
    if swarm_active(client):
        return False
    had_gwbridge = bool(client.networks.list(names=["docker_gwbridge"]))
    # Loopback as the advertised address: a one-node swarm that other machines cannot join.
    client.swarm.init(advertise_addr="127.0.0.1")
    node = client.nodes.get(client.info()["Swarm"]["NodeID"])
    spec = node.attrs["Spec"]
    spec["Labels"] = {
        **spec.get("Labels", {}),
        JOINED_LABEL: "gwbridge-existed" if had_gwbridge else "new",
    }
    node.update(spec)
    log("the engine was not in Swarm mode: ran `docker swarm init --advertise-addr 127.0.0.1`")
    return True


def containers_named_on_networks(client: docker.DockerClient) -> list[str]:
    """The running containers, other than Swarm's tasks, that find each other by name: those on a
    network of their own (a Compose project's, say). Docker's DNS stops answering for them once the
    engine leaves Swarm, until they restart."""
    named = []
    for container in client.containers.list():
        if "com.docker.swarm.task.id" in container.labels:
            continue
        networks = container.attrs["NetworkSettings"]["Networks"] or {}
        if set(networks) - {"bridge", "host", "none", "docker_gwbridge"}:
            named.append(container.name)
    return sorted(named)


def leave_swarm_if_joined(client: docker.DockerClient) -> str:
    """Leave Swarm if the course joined it and no service is left; say what was done."""
    if not swarm_active(client):
        return "the engine is not in Swarm mode"
    node = client.nodes.get(client.info()["Swarm"]["NodeID"])
    joined = node.attrs["Spec"].get("Labels", {}).get(JOINED_LABEL)
    if joined is None:
        return "Swarm was active before the course used it: left as it is"
    services = [s.name for s in client.services.list()]
    if services:
        return f"Swarm stays: other services still run ({', '.join(sorted(services))})"
    named = containers_named_on_networks(client)
    if named:
        listed = ", ".join(named[:5]) + (", …" if len(named) > 5 else "")
        return (
            f"Swarm stays: leaving it would take the DNS names of {len(named)} running"
            f" container(s) on their networks ({listed}; a Docker bug, moby/moby#45144)."
            " Once they are stopped: docker swarm leave --force"
        )
    client.swarm.leave(force=True)
    # `swarm init` created docker_gwbridge when the first task started; `leave` keeps it.
    if joined == "new":
        for network in client.networks.list(names=["docker_gwbridge"]):
            network.reload()
            if not network.attrs.get("Containers"):
                network.remove()
    return "left Swarm (docker swarm leave --force), as it was before"


# --- Deploying, waiting, removing -----------------------------------------------------------------


def build_agent_image(tag: str) -> None:
    """Build research-agent/Dockerfile.optimized under a tag of our own, from this checkout.

    What `make build` builds, but under a name no other build on the machine will move. BuildKit's
    cache makes it quick when research-agent:optimized was just built.
    """
    log(f"building {tag} from research-agent/Dockerfile.optimized")
    result = subprocess.run(
        ["docker", "build", "-q", "-f", "Dockerfile.optimized", "-t", tag, "."],
        cwd=ROOT / "research-agent",
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker build of {tag} failed:\n{result.stderr[-3000:]}")


# Where each stack's `edge` network gets its /24: lesson 06, the tests and the benchmark each
# deploy a stack of their own, and two networks that ask for the same subnet cannot both exist.
EDGE_SUBNETS = ipaddress.ip_network("10.251.0.0/16")


def choose_edge_subnet(stack: str, networks: dict[str, list[str]]) -> str:
    """The subnet for `stack`'s edge network, given every network's subnets by name: the one it
    has already (a redeploy must ask for the same), else the first /24 no network overlaps."""
    if networks.get(f"{stack}_edge"):
        return networks[f"{stack}_edge"][0]
    taken = [ipaddress.ip_network(s) for subnets in networks.values() for s in subnets]
    for candidate in EDGE_SUBNETS.subnets(new_prefix=24):
        if not any(candidate.overlaps(net) for net in taken if net.version == 4):
            return str(candidate)
    raise RuntimeError(f"no free /24 left in {EDGE_SUBNETS} for the stack's edge network")


def edge_subnet(client: docker.DockerClient, stack: str) -> str:
    networks = {
        net.name: [
            c["Subnet"] for c in (net.attrs.get("IPAM") or {}).get("Config") or [] if "Subnet" in c
        ]
        for net in client.networks.list()
    }
    return choose_edge_subnet(stack, networks)


def stack_env(stack: str, port: int, subnet: str, **settings: str) -> dict:
    """The variables stack.yml reads; the HAProxy config's name carries a hash of the file."""
    digest = hashlib.sha256(HAPROXY_CFG.read_bytes()).hexdigest()[:12]
    return {
        **os.environ,
        "STACK": stack,
        "PORT": str(port),
        "EDGE_SUBNET": subnet,
        "HAPROXY_CFG_HASH": digest,
        **settings,
    }


def deploy(stack: str, env: dict) -> None:
    # --resolve-image never: the images are local, there is no registry to ask for a digest.
    stack_file = str(STACK_FILE.relative_to(ROOT))
    command = ["docker", "stack", "deploy", "--resolve-image", "never", "-c", stack_file, stack]
    log(" ".join(command))
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"docker stack deploy failed:\n{result.stderr}")


def service_name(stack: str, service: str) -> str:
    return f"{stack}_{service}"


def running_tasks(client: docker.DockerClient, name: str) -> list[dict]:
    return [
        t
        for t in client.services.get(name).tasks(filters={"desired-state": "running"})
        if t["Status"]["State"] == "running"
    ]


def container_health(client: docker.DockerClient, task: dict) -> str:
    container_id = task["Status"].get("ContainerStatus", {}).get("ContainerID")
    try:
        state = client.containers.get(container_id).attrs["State"]
    except (docker.errors.NotFound, docker.errors.NullResource):
        return "gone"
    return state.get("Health", {}).get("Status", "none")


def haproxy_stats(url: str) -> list[dict]:
    """HAProxy's stats page as CSV, one dict per frontend, backend and server."""
    with urllib.request.urlopen(f"{url}/haproxy/stats;csv", timeout=5) as response:
        lines = response.read().decode().splitlines()
    header = lines[0].lstrip("# ").split(",")
    return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]


def up_servers(url: str) -> int:
    """How many agent replicas HAProxy sends traffic to (its `agents` servers with status UP)."""
    return sum(
        row["pxname"] == "agents" and row["svname"] != "BACKEND" and row["status"] == "UP"
        for row in haproxy_stats(url)
    )


def wait_until_serving(
    client: docker.DockerClient, stack: str, url: str, replicas: int, timeout: float = 240
) -> float:
    """Wait until every task is running and healthy and HAProxy has exactly `replicas` agents UP."""
    started = time.monotonic()
    wanted = {"agent": replicas, "redis": 1, "haproxy": 1}
    status = "nothing yet"
    while time.monotonic() - started < timeout:
        try:
            counts = {}
            for service in wanted:
                tasks = running_tasks(client, service_name(stack, service))
                counts[service] = sum(container_health(client, t) == "healthy" for t in tasks)
            status = ", ".join(f"{s} {counts[s]}/{n} healthy" for s, n in wanted.items())
            if counts == wanted:
                servers = up_servers(url)
                status += f", HAProxy sees {servers} agent(s) UP"
                if servers == replicas:
                    return time.monotonic() - started
        except (docker.errors.NotFound, OSError, ValueError, KeyError, IndexError) as error:
            status = f"not yet: {error!r}"
        time.sleep(1)
    raise TimeoutError(f"stack {stack} not serving after {timeout:.0f}s: {status}")


def remove(client: docker.DockerClient, stack: str, timeout: float = 120) -> None:
    """docker stack rm, wait until its containers and networks are gone, then drop its volumes."""
    subprocess.run(
        ["docker", "stack", "rm", stack], capture_output=True, text=True, timeout=60, check=False
    )
    label = {"label": f"{NAMESPACE}={stack}"}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        containers = client.containers.list(all=True, filters=label, sparse=True)
        if not containers and not client.networks.list(filters=label):
            break
        time.sleep(1)
    else:
        raise TimeoutError(f"stack {stack} still has containers or networks after {timeout:.0f}s")
    # `docker stack rm` keeps volumes (Redis's cache here); they are this stack's alone.
    for volume in client.volumes.list(filters=label):
        volume.remove()


def leftovers(client: docker.DockerClient, stack: str) -> dict:
    """What of the stack is still on the engine (all empty once removed)."""
    label = {"label": f"{NAMESPACE}={stack}"}
    found = {
        "containers": [
            c.name for c in client.containers.list(all=True, filters=label, ignore_removed=True)
        ],
        "networks": [n.name for n in client.networks.list(filters=label)],
        "volumes": [v.name for v in client.volumes.list(filters=label)],
    }
    if swarm_active(client):
        found["services"] = [s.name for s in client.services.list(filters=label)]
        found["configs"] = [c.name for c in client.configs.list(filters=label)]
    return found


# --- make lesson-06 / make lesson-06-down -------------------------------------------------------


def cache_states(url: str, asks: int) -> dict[str, str]:
    """Each replica's cache ("redis" or "bypassed") from its /ready, by HAProxy's server name.

    Swarm starts Redis and the agents in no order, so a replica may have found no Redis and
    skip it for a while; its /ready probes Redis again when its breaker is due.
    """
    states = {}
    for _ in range(asks):
        with urllib.request.urlopen(f"{url}/ready", timeout=10) as response:
            states[response.headers["X-Served-By"]] = json.load(response)["cache"]
    return states


def wait_until_cache_shared(url: str, replicas: int, timeout: float = 90) -> None:
    """Wait until every replica uses Redis: until then the same question asked twice can miss."""
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        try:
            states = cache_states(url, asks=4 * replicas)
            if len(states) == replicas and set(states.values()) == {"redis"}:
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
            states = {"error": repr(error)}
        time.sleep(1)
    raise TimeoutError(f"not every replica uses Redis after {timeout:.0f}s: {states}")


def api_keys() -> tuple[str, str]:
    """API_KEYS for the stack, and how a caller sends one: the shell's API_KEYS, else the key in
    KEY_FILE, made the first time (only its owner may read it)."""
    if os.environ.get("API_KEYS", "").strip():
        return os.environ["API_KEYS"], "Authorization: Bearer <a key of API_KEYS>"
    if not KEY_FILE.exists():
        fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        log(f"made an API key for the stack: {KEY_FILE.relative_to(ROOT)}")
    sent = f"Authorization: Bearer $(cat {KEY_FILE.relative_to(ROOT)})"
    return KEY_FILE.read_text().strip(), sent


def up(stack: str, port: int, image: str) -> None:
    client = docker.from_env()
    join_swarm_if_needed(client)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    keys, header = api_keys()
    env = stack_env(stack, port, edge_subnet(client, stack), AGENT_IMAGE=image, API_KEYS=keys)
    deploy(stack, env)
    log("waiting until 3 agent replicas, Redis and HAProxy are healthy (a new task needs ~10 s)")
    wait_until_serving(client, stack, url, replicas=3)
    log("waiting until every replica uses Redis (one that started before it retries within 10 s)")
    wait_until_cache_shared(url, replicas=3)
    took = time.monotonic() - started
    agent, proxy = service_name(stack, "agent"), service_name(stack, "haproxy")
    print(
        f"""
  Research agent on Swarm: {url}  (3 replicas behind HAProxy, serving after {took:.0f}s)
  Offline model unless OPENAI_API_KEY was set when the stack was deployed.
  Swarm opens port {port} on every interface of this machine: /v1 asks for the API key.

  Ask it:     curl -s -X POST {url}/v1/research -H "{header}" \\
                -H 'content-type: application/json' -d '{{"query": "Why run several replicas?"}}'
  Which one:  curl -si {url}/health | grep -i -E 'x-served-by|x-request-id'
  Watch:      docker service ps {agent}
              docker service logs -f {proxy}
              {url}/haproxy/stats   (HAProxy's view of the replicas, in a browser)
  Roll:       docker service update --image {image} --force {agent}
  Remove:     make lesson-06-down{"" if stack == "research-agent" else f" STACK={stack}"}
"""
    )


def down(stack: str) -> None:
    client = docker.from_env()
    if swarm_active(client) and client.services.list(filters={"label": f"{NAMESPACE}={stack}"}):
        log(f"docker stack rm {stack} (and its Redis volume)")
        remove(client, stack)
    else:
        log(f"no stack {stack} to remove")
    log(leave_swarm_if_joined(client))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--stack", default=os.getenv("STACK", "research-agent"))
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--image", default=os.getenv("AGENT_IMAGE", "research-agent:optimized"))
    args = parser.parse_args()
    try:
        if args.action == "up":
            up(args.stack, args.port, args.image)
        else:
            down(args.stack)
    except (RuntimeError, TimeoutError, docker.errors.DockerException) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
