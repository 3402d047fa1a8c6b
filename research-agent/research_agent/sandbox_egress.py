"""Egress by allow-list: a run's container reaches the network only through an egress proxy.

Lesson 04, Going further ("The network as a capability"). With SANDBOX_EGRESS=allowlist the
runner owns three things on the engine, made on first use and removed when it closes:

    an internal network   no route out, and no address for the host on its bridge: its only
                          other member is the proxy
    the egress proxy      docker/egress-proxy (Squid): lets through HTTP and CONNECT to the hosts
                          SANDBOX_ALLOWED_HOSTS names, adds SANDBOX_CREDENTIALS' headers, refuses
                          the rest with a 403, logs one line per decision; also on
                          SANDBOX_EGRESS_UPSTREAM_NETWORK, its way out
    a volume of CAs       the proxy's CA (it signs what the proxy decrypts to add a credential),
                          mounted read-only into each sandbox as its trust store

Each run gets its own proxy credentials (the run id, and an HMAC of it under a key the runner and
the proxy share), so the proxy logs and caps each run apart, and one run cannot pass for another.
A fresh container is created on the internal network. A pooled one is created ahead with what
egress needs (a runtime that can be given a network, the CAs, its run's credentials) but no
network, and is attached only when a run takes it; like every sandbox, it serves that one run.
"""

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from string import Template

from docker.errors import NotFound
from docker.types import Mount

from .docker_client import docker_client
from .sandbox import DOCKER_ERRORS, LABEL, SandboxUnavailable
from .sandbox_config import SandboxConfig

logger = logging.getLogger(__name__)

# The proxy, its network and volume carry this label (owner's name), not LABEL's: the sweep
# removes sandbox containers, and the proxy is not one.
EGRESS_LABEL = f"{LABEL}-egress.owner"
# Each sandbox with egress carries its run id (the proxy's log names it) as this label.
RUN_LABEL = f"{LABEL}.egress-run"
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
    """The internal network, the proxy and its CA volume of one runner: made by `start()` (once,
    on the first container), removed by `close()`. A SandboxRunner given it as its `network` asks
    it for each container's `options` and `join`s a container made ahead to it."""

    def __init__(self, config: SandboxConfig):
        self.config = config
        # Docker names allow [a-zA-Z0-9_.-]; the owner label is unique per service.
        self.name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{config.owner}-egress")
        self.key = secrets.token_hex(16)  # EGRESS_RUN_KEY: run credentials are signed with it
        self._lock = threading.Lock()
        self._client = None
        self.network = self.proxy = self.volume = None
        self.proxy_ip = ""

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
        # internal: no route beyond its members. inhibit_ipv4: the bridge gets no address, so the
        # host (whose services listen on every address it has) is not one of them.
        self.network = client.networks.create(
            self.name, driver="bridge", internal=True, labels=labels,
            options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        )  # fmt: skip
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
        self.proxy = client.containers.create(
            c.egress_proxy_image, name=f"{self.name}-proxy", environment=environment,
            network=self.network.name, volumes=volumes, labels=labels,
            read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges"],
            tmpfs={"/run/egress": "uid=13,gid=13,mode=0700"}, mem_limit="256m", pids_limit=128,
        )  # fmt: skip
        client.networks.get(c.egress_upstream_network).connect(self.proxy)
        self.proxy.start()
        deadline = time.monotonic() + READY_SECONDS
        while b"Accepting SSL bumped HTTP Socket connections" not in self.proxy.logs():
            self.proxy.reload()
            if self.proxy.status not in ("created", "running") or time.monotonic() > deadline:
                tail = self.proxy.logs(tail=20).decode(errors="replace")
                raise SandboxUnavailable(f"the egress proxy did not start:\n{tail}")
            time.sleep(0.2)
        self.proxy.reload()
        self.proxy_ip = self.proxy.attrs["NetworkSettings"]["Networks"][self.name]["IPAddress"]
        logger.info("egress proxy %s on %s:%d", self.proxy.name, self.proxy_ip, PROXY_PORT)

    @property
    def runtime(self) -> str | None:
        """A runtime whose containers can be given a network (config.runtime_for)."""
        return self.config.runtime_for(network=True)

    def options(self, request_id: str, made_ahead: bool) -> dict:
        """What a sandbox container needs to reach the allowed hosts: the network, the runtime,
        the run's proxy credentials, the CAs to trust. One made ahead (the pool's) waits with no
        network and is joined to it when a run takes it."""
        self.start()
        run = self.new_run(request_id)
        if not made_ahead:
            logger.info("run %s: egress as %s", request_id, run)
        return {
            "network": "none" if made_ahead else self.network.name,
            "runtime": self.runtime,
            "environment": self.environment(run),
            "mounts": self.mounts(),
            "labels": {RUN_LABEL: run},
        }

    def join(self, container, request_id: str) -> None:
        """Give a container made ahead the internal network, as a run takes it."""
        try:
            self.attach(container)
            container.reload()
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"cannot attach the sandbox to its network: {exc}") from exc
        logger.info("run %s: egress as %s", request_id, container.labels.get(RUN_LABEL))

    def new_run(self, request_id: str) -> str:
        """A run id for the proxy: the request id's safe characters, and a random part."""
        safe = RUN_ID.sub("", request_id)[:40] or "run"
        return f"{safe}-{secrets.token_hex(6)}"

    def environment(self, run: str) -> dict[str, str]:
        """What a run's container is given: its proxy, with its credentials, and the CAs."""
        url = f"http://{run}:{run_password(self.key, run)}@{self.proxy_ip}:{PROXY_PORT}"
        bundle = f"{CA_FOLDER}/bundle.pem"
        return {
            **dict.fromkeys(["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"], url),
            "NO_PROXY": "", "no_proxy": "",
            "SSL_CERT_FILE": bundle, "REQUESTS_CA_BUNDLE": bundle, "PIP_CERT": bundle,
        }  # fmt: skip

    def mounts(self) -> list[Mount]:
        return [Mount(CA_FOLDER, self.volume.name, type="volume", read_only=True)]

    def attach(self, container) -> None:
        """Give a container made without a network (a pooled one) the internal network."""
        api = self._client.api
        api.disconnect_container_from_network(container.id, "none")
        api.connect_container_to_network(container.id, self.network.id)

    def _remove_leftovers(self) -> None:
        mine = {"label": f"{EGRESS_LABEL}={self.config.owner}"}
        for container in self._client.containers.list(all=True, filters=mine):
            with contextlib.suppress(NotFound):
                container.remove(force=True)
        for network in self._client.networks.list(filters=mine):
            with contextlib.suppress(NotFound):
                network.remove()
        for volume in self._client.volumes.list(filters=mine):
            with contextlib.suppress(NotFound):
                volume.remove(force=True)

    def _remove(self) -> None:
        for thing in (self.proxy, self.network, self.volume):
            if thing is not None:
                with contextlib.suppress(*DOCKER_ERRORS):
                    thing.remove(force=True) if thing is self.proxy else thing.remove()
        self.network = self.proxy = self.volume = None

    def close(self) -> None:
        """Remove the proxy, the network and the volume (call it once no run is going)."""
        with self._lock:
            self._remove()
            if self._client is not None:
                self._client.close()
                self._client = None
