"""Egress by allow-list: a run's container reaches the network only through an egress proxy.

Lesson 04, Going further ("The network as a capability"). With SANDBOX_EGRESS=allowlist the
runner owns these things on the engine:

    the egress proxy      docker/egress-proxy (Squid): lets through HTTP and CONNECT to the hosts
                          SANDBOX_ALLOWED_HOSTS names, adds SANDBOX_CREDENTIALS' headers, refuses
                          the rest with a 403, logs one line per decision; on
                          SANDBOX_EGRESS_UPSTREAM_NETWORK, its way out
    a volume of CAs       the proxy's CA (it signs what the proxy decrypts to add a credential),
                          mounted read-only into each sandbox as its trust store
    a network per run     internal (no route out), no address for the host on its bridge, a /29
                          of its own: its members are the run's container and the proxy, so two
                          runs never share a network and cannot reach each other

The proxy and the volume are made on first use and removed when the runner closes. A run's
network is made with its container, and removed once the container is gone; one left by a crash
(no container of its run is left) goes at the next sweep (Sweeper.sweep calls `sweep` here).

Each run gets its own proxy credentials (the run id, and an HMAC of it under a key the runner and
the proxy share), so the proxy logs and caps each run apart, and one run cannot pass for another.
A fresh container is created on its run's network. A pooled one is created ahead with what
egress needs (a runtime that can be given a network, the CAs, its run's credentials) but no
network, and is attached to its run's network only when a run takes it; like every sandbox, it
serves that one run.
"""

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import secrets
import threading
import time
from string import Template

from docker.errors import APIError, NotFound
from docker.types import IPAMConfig, IPAMPool, Mount

from ..settings import SandboxConfig
from .docker_client import docker_client
from .runner import DOCKER_ERRORS, LABEL, SandboxUnavailable

logger = logging.getLogger(__name__)

# The proxy, its network and volume carry this label (owner's name), not LABEL's: the sweep
# removes sandbox containers, and the proxy is not one.
EGRESS_LABEL = f"{LABEL}-egress.owner"
# Each sandbox with egress carries its run id (the proxy's log names it) as this label; so does
# the run's network, with the time it was made.
RUN_LABEL = f"{LABEL}.egress-run"
CREATED_LABEL = f"{LABEL}.egress-created"
# A run's network with no container of its run this long after it was made is a leftover: its
# container is made right after it, and removed before it.
NETWORK_GRACE_SECONDS = 60
PROXY_PORT = 3128
CA_FOLDER = "/etc/egress"  # in the sandbox: the volume of CAs, read-only
READY_SECONDS = 60  # Squid, its helpers and the CA start within this
RUN_ID = re.compile(r"[^A-Za-z0-9_-]")


def run_password(key: str, run: str) -> str:
    """The proxy password of run `run` (docker/egress-proxy/helpers.py checks it the same way)."""
    return hmac.new(key.encode(), run.encode(), hashlib.sha256).hexdigest()[:32]


def credential_variables(credentials: str) -> dict[str, str]:
    """The variables SANDBOX_CREDENTIALS names (${VAR}), from this process's environment: they go
    to the proxy's environment, and nowhere else."""
    names = {
        match.group("named") or match.group("braced")
        for match in Template.pattern.finditer(credentials)
        if match.group("named") or match.group("braced")
    }
    missing = sorted(name for name in names if name not in os.environ)
    if missing:
        raise SandboxUnavailable(f"SANDBOX_CREDENTIALS names {', '.join(missing)}: not set")
    return {name: os.environ[name] for name in names}


class EgressGateway:
    """The proxy and its CA volume of one runner, made by `start()` (once, on the first
    container) and removed by `close()`, and a network per run. A SandboxRunner given it as its
    `network` asks it for each container's `options` (which makes the run's network), `join`s a
    container made ahead to its run's network, and `release`s a run's network once its
    container is gone."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        # Docker names allow [a-zA-Z0-9_.-]; the owner label is unique per service.
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{config.owner}-egress")
        self.key = secrets.token_hex(16)  # EGRESS_RUN_KEY: run credentials are signed with it
        self._lock = threading.Lock()
        self._client = None
        self.proxy = self.volume = None

    def start(self) -> None:
        with self._lock:
            if self.proxy is not None:
                return
            try:
                self._client = self._client or docker_client()
                self._remove_leftovers()  # a crashed service of the same owner left them
                self._start()
            except DOCKER_ERRORS as exc:
                self._remove()
                raise SandboxUnavailable(f"cannot start the egress proxy: {exc}") from exc
            except BaseException:
                self._remove()
                raise

    def _start(self) -> None:
        c, client, labels = self.config, self._client, {EGRESS_LABEL: self.config.owner}
        self.volume = client.volumes.create(f"{self.name}-ca", labels=labels)
        environment = {
            "SANDBOX_ALLOWED_HOSTS": c.allowed_hosts,
            "SANDBOX_CREDENTIALS": c.credentials,
            "EGRESS_RUN_KEY": self.key,
            "SANDBOX_MAX_BYTES": str(c.egress_max_bytes),
            "SANDBOX_MAX_REQUESTS": str(c.egress_max_requests),
            **credential_variables(c.credentials),
        }
        volumes = {self.volume.name: {"bind": "/run/egress-ca", "mode": "rw"}}
        if c.egress_upstream_ca:
            volumes[os.path.abspath(c.egress_upstream_ca)] = {
                "bind": "/etc/egress-upstream-ca.pem", "mode": "ro"
            }  # fmt: skip
            environment["SANDBOX_UPSTREAM_CA"] = "/etc/egress-upstream-ca.pem"
        # On its way out only: each run's network is joined to it as the run's container is made.
        # Port 53 for its unprivileged user: Squid's resolver (resolver.py) listens on loopback.
        self.proxy = client.containers.create(
            c.egress_proxy_image, name=f"{self.name}-proxy", environment=environment,
            network=c.egress_upstream_network, volumes=volumes, labels=labels,
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            tmpfs={"/run/egress": "uid=13,gid=13,mode=0700"}, mem_limit="256m", pids_limit=128,
            sysctls={"net.ipv4.ip_unprivileged_port_start": "53"},
        )  # fmt: skip
        self.proxy.start()
        deadline = time.monotonic() + READY_SECONDS
        while b"Accepting SSL bumped HTTP Socket connections" not in self.proxy.logs():
            self.proxy.reload()
            if self.proxy.status not in ("created", "running") or time.monotonic() > deadline:
                tail = self.proxy.logs(tail=20).decode(errors="replace")
                raise SandboxUnavailable(f"the egress proxy did not start:\n{tail}")
            time.sleep(0.2)
        logger.info("egress proxy %s started", self.proxy.name)

    @property
    def runtime(self) -> str | None:
        """A runtime whose containers can be given a network (config.runtime_for)."""
        return self.config.runtime_for(network=True)

    def options(self, request_id: str, made_ahead: bool) -> dict:
        """What a sandbox container needs to reach the allowed hosts: its run's network (made
        here, with the proxy on it), the runtime, the run's proxy credentials, the CAs to trust.
        One made ahead (the pool's) waits with no network and is joined to its run's network
        when a run takes it."""
        self.start()
        run = self.new_run(request_id)
        proxy_ip = self.run_network(run)
        if not made_ahead:
            logger.info("run %s: egress as %s", request_id, run)
        return {
            "network": "none" if made_ahead else self.network_name(run),
            "runtime": self.runtime,
            "environment": self.environment(run, proxy_ip),
            "mounts": self.mounts(),
            "labels": {RUN_LABEL: run},
        }

    def network_name(self, run: str) -> str:
        return f"{self.name}-{run}"

    def run_network(self, run: str) -> str:
        """Make run `run`'s network, join the proxy to it, and return the proxy's address there.
        internal: no route beyond its members. inhibit_ipv4: the bridge gets no address, so the
        host (whose services listen on every address it has) is not one of them. Its own /29 of
        config.egress_subnets (Docker's own pools hold about 30 networks in all)."""
        labels = {
            EGRESS_LABEL: self.config.owner,
            RUN_LABEL: run,
            CREATED_LABEL: str(int(time.time())),
        }
        pool = ipaddress.ip_network(self.config.egress_subnets)
        for _ in range(20):
            block = secrets.randbelow(2 ** (29 - pool.prefixlen))
            subnet = ipaddress.ip_network((int(pool.network_address) + 8 * block, 29))
            hosts = list(subnet.hosts())  # the bridge's (unused) address, the proxy's, 4 more
            ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=str(subnet), gateway=str(hosts[0]))])
            try:
                network = self._client.networks.create(
                    self.network_name(run), driver="bridge", internal=True, labels=labels,
                    options={"com.docker.network.bridge.inhibit_ipv4": "true"}, ipam=ipam,
                )  # fmt: skip
                break
            except APIError as exc:
                if "overlap" not in str(exc).lower():  # a block taken by another network
                    raise SandboxUnavailable(f"cannot make the run's network: {exc}") from exc
            except DOCKER_ERRORS as exc:
                raise SandboxUnavailable(f"cannot make the run's network: {exc}") from exc
        else:
            raise SandboxUnavailable(f"no free /29 in {pool} after 20 tries")
        proxy_ip = str(hosts[1])
        try:
            self._client.api.connect_container_to_network(
                self.proxy.id, network.id, ipv4_address=proxy_ip
            )
        except DOCKER_ERRORS as exc:
            drop(network)
            raise SandboxUnavailable(f"cannot join the proxy to the run's network: {exc}") from exc
        return proxy_ip

    def join(self, container, request_id: str) -> None:
        """Give a container made ahead its run's network, as a run takes it."""
        run = run_of(container)
        try:
            api = self._client.api
            api.disconnect_container_from_network(container.id, "none")
            api.connect_container_to_network(container.id, self.network_name(run))
            container.reload()
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"cannot attach the sandbox to its network: {exc}") from exc
        logger.info("run %s: egress as %s", request_id, run)

    def release(self, container) -> None:
        """Remove the network of `container`'s run (call it once the container is gone); a
        network that cannot be removed now is left to the sweep."""
        run = run_of(container)
        if run and self._client is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                drop(self._client.networks.get(self.network_name(run)))

    def sweep(self, client) -> int:
        """Remove the run networks, any runner's, whose run has no container left (its runner
        died before releasing it, or could not): return how many."""
        try:
            networks = client.networks.list(filters={"label": RUN_LABEL})
            runs = {
                (c.attrs.get("Labels") or {}).get(RUN_LABEL)
                for c in client.containers.list(all=True, sparse=True, filters={"label": RUN_LABEL})
            }
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        removed, now = 0, time.time()
        for network in networks:
            labels = network.attrs.get("Labels") or {}
            created = labels.get(CREATED_LABEL, "")
            made = int(created) if created.isdigit() else 0
            if labels.get(RUN_LABEL) not in runs and now - made > NETWORK_GRACE_SECONDS:
                with contextlib.suppress(*DOCKER_ERRORS):
                    drop(network)
                    removed += 1
        return removed

    def new_run(self, request_id: str) -> str:
        """A run id for the proxy: the request id's safe characters, and a random part."""
        safe = RUN_ID.sub("", request_id)[:40] or "run"
        return f"{safe}-{secrets.token_hex(6)}"

    def environment(self, run: str, proxy_ip: str) -> dict[str, str]:
        """What a run's container is given: its proxy, with its credentials, and the CAs."""
        url = f"http://{run}:{run_password(self.key, run)}@{proxy_ip}:{PROXY_PORT}"
        bundle = f"{CA_FOLDER}/bundle.pem"
        return {
            **dict.fromkeys(["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"], url),
            "NO_PROXY": "", "no_proxy": "",
            "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "PIP_CERT": bundle,
        }  # fmt: skip

    def mounts(self) -> list[Mount]:
        return [Mount(CA_FOLDER, self.volume.name, type="volume", read_only=True)]

    def _remove_leftovers(self) -> None:
        mine = {"label": f"{EGRESS_LABEL}={self.config.owner}"}
        for container in self._client.containers.list(all=True, filters=mine):
            with contextlib.suppress(NotFound):
                container.remove(force=True)
        for network in self._client.networks.list(filters=mine):
            with contextlib.suppress(NotFound):
                drop(network)
        for volume in self._client.volumes.list(filters=mine):
            with contextlib.suppress(NotFound):
                volume.remove(force=True)

    def _remove(self) -> None:
        """The proxy, every run's network, the volume."""
        if self.proxy is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                self.proxy.remove(force=True)
        if self._client is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                mine = {"label": f"{EGRESS_LABEL}={self.config.owner}"}
                for network in self._client.networks.list(filters=mine):
                    with contextlib.suppress(*DOCKER_ERRORS):
                        drop(network)
        if self.volume is not None:
            with contextlib.suppress(*DOCKER_ERRORS):
                self.volume.remove()
        self.proxy = self.volume = None

    def close(self) -> None:
        """Remove the proxy, the runs' networks and the volume (call it once no run is going)."""
        with self._lock:
            self._remove()
            if self._client is not None:
                self._client.close()
                self._client = None


def run_of(container) -> str | None:
    """The egress run a sandbox container serves (its label), if any."""
    return ((container.attrs.get("Config") or {}).get("Labels") or {}).get(RUN_LABEL)


def drop(network) -> None:
    """Disconnect what is still on a network (the proxy; a run's container a crash left), then
    remove it."""
    network.reload()
    for container in network.attrs.get("Containers") or {}:
        with contextlib.suppress(NotFound):
            network.client.api.disconnect_container_from_network(container, network.id, True)
    with contextlib.suppress(NotFound):
        network.remove()
