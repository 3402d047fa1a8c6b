"""Lesson 08, going further: tool servers started on demand, limited, and stopped when idle.

`UrlLauncher` serves catalog entries with a `url:` (already running). `DockerLauncher` starts an
entry's `image:` on first use through the Docker API: labelled, with memory/CPU/pids limits, a
read-only root, no capabilities, as nobody, on the gateway's tools network (internal: no way out
unless the entry says `internet: true`), with only the environment variables the entry declares.
An entry may name one more network (`network:`), joined once started: the python server's, which
it shares with its sandbox guard alone.
A sweep stops containers idle for longer than their `idle_seconds`.

The Docker API is root on the host. In Compose the gateway does not get the socket: it talks to
a guard (code/lesson08/docker_guard.py) that lets through only what this file asks for.
"""

import asyncio
import contextlib
import importlib
import logging
import os
import secrets
import time

import httpx

logger = logging.getLogger("mcp_gateway")

LABEL = "lesson08.server"  # which catalog server a container runs
OWNER_LABEL = "lesson08.owner"  # which gateway started it: its Compose project's name


def container_environment(entry, environ: dict[str, str]) -> dict[str, str]:
    """The entry's plain settings plus the secrets it declares, from the gateway's environment.
    Nothing else: not the gateway's own keys, not the agent's OPENAI_API_KEY."""
    env = dict(entry.env)
    env.update({name: environ[name] for name in entry.secrets if name in environ})
    return env


class UrlLauncher:
    START_SECONDS = 0  # it starts nothing: the server runs already

    async def url_for(self, entry) -> str:
        return entry.url

    def headers_for(self, entry) -> dict[str, str]:
        return {}  # a server you run yourself: reached as you set it up

    def touch(self, entry) -> None:
        pass

    async def close(self) -> None:
        pass


class DockerLauncher:
    # How long a started server has to answer /health: a first start on a busy machine is slow.
    START_SECONDS = 60

    def __init__(self, *, owner: str, network: str, internet_network: str | None, client=None):
        # Imported now, with the gateway, not at a tool's first use, which waited for it
        # (`make bench-mcp`'s first use: 1.40x a bare `docker run` before, 1.29x after).
        importlib.import_module("docker")  # only a gateway that starts containers needs it

        self.owner, self.network, self.internet_network = owner, network, internet_network
        self._client = client
        self.last_used: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.tokens: dict[str, str] = {}  # server -> the token of the container it runs now

    @property
    def client(self):
        if self._client is None:
            import docker  # imported already, by __init__

            self._client = docker.from_env()  # asks the engine its version: at first use
        return self._client

    def name(self, entry) -> str:
        return f"{self.owner}-{entry.name}"

    def run_kwargs(self, entry) -> dict:
        """Everything the container is started with (tests read it, the guard checks it)."""
        return dict(
            image=entry.image,
            name=self.name(entry),
            detach=True,
            labels={LABEL: entry.name, OWNER_LABEL: self.owner},
            environment={
                **container_environment(entry, dict(os.environ)),
                "HOST": "0.0.0.0",
                "PORT": str(entry.port),
                "MCP_ALLOWED_HOSTS": f"{self.name(entry)}:*,{self.name(entry)}",
                # Its owner label: a server that starts containers of its own (the python
                # server's sandboxes) labels them with it, for its guard and lesson-08-down.
                "GATEWAY_OWNER": self.owner,
                # The token its /mcp asks for: only this gateway has it (lesson08.transport).
                "MCP_SERVER_TOKEN": self.tokens.get(entry.name, ""),
            },
            network=self.network,
            mem_limit=entry.memory,
            memswap_limit=entry.memory,
            nano_cpus=int(entry.cpus * 1e9),
            pids_limit=entry.pids,
            read_only=True,
            tmpfs={"/tmp": "rw,noexec,nosuid,size=16m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user="65534:65534",
        )

    async def url_for(self, entry) -> str:
        async with self._lock(entry):  # two first calls at once start one container
            url = f"http://{self.name(entry)}:{entry.port}"
            # One this gateway did not start (a leftover of a crash) has a token it does not know.
            if entry.name not in self.tokens or not await self._healthy(url, wait=0):
                await asyncio.to_thread(self._start, entry)
                if not await self._healthy(url, wait=self.START_SECONDS):
                    raise RuntimeError(f"tool server {entry.name!r} did not become healthy")
            self.touch(entry)
            return url + "/mcp"

    def headers_for(self, entry) -> dict[str, str]:
        """What the gateway sends the entry's server: the token of the container it started."""
        token = None if entry.url else self.tokens.get(entry.name)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def touch(self, entry) -> None:
        self.last_used[entry.name] = time.monotonic()

    def _lock(self, entry) -> asyncio.Lock:
        return self._locks.setdefault(entry.name, asyncio.Lock())

    async def retire(self, entry) -> bool:
        """The idle sweep's stop: checked and done under the lock url_for takes, so a first use
        meanwhile waits and then starts a new container, instead of opening a session to the one
        being removed (whose requests would then wait for an answer that never comes)."""
        async with self._lock(entry):
            if not self.idle(entry, time.monotonic()):
                return False  # used since the sweep looked
            await asyncio.to_thread(self.stop, entry)
        return True

    def _start(self, entry) -> None:
        import docker

        with contextlib.suppress(docker.errors.NotFound):
            found = self.client.containers.get(self.name(entry))
            if found.status == "running" and entry.name in self.tokens:
                return  # still starting (an earlier wait gave up): wait again
            found.remove(force=True)  # a leftover of a crashed gateway
        self.tokens[entry.name] = secrets.token_urlsafe(32)  # a new one for each container
        container = self.client.containers.run(**self.run_kwargs(entry))
        if entry.network:  # the python server's, which it shares with its sandbox guard alone
            try:
                network = entry.network.replace("{owner}", self.owner)
                self.client.api.connect_container_to_network(container.id, network)
            except docker.errors.APIError:
                container.remove(force=True)  # not half-made: the next use starts it again
                raise
        if entry.internet and self.internet_network:
            self.client.networks.get(self.internet_network).connect(container)
        logger.info(f'{{"event": "server_started", "server": "{entry.name}"}}')

    async def _healthy(self, url: str, wait: float) -> bool:
        deadline = time.monotonic() + wait
        # A connect that gets no answer is tried again soon: the address of a container that is
        # still starting may drop the first attempts instead of refusing them.
        async with httpx.AsyncClient(timeout=httpx.Timeout(2, connect=0.25)) as http:
            while True:
                try:
                    if (await http.get(url + "/health")).status_code == 200:
                        return True
                except httpx.HTTPError:
                    pass
                if time.monotonic() >= deadline:
                    return False
                # Often: the first use waits on this loop, and a refused connect costs nothing.
                await asyncio.sleep(0.02)

    def idle(self, entry, now: float) -> bool:
        """Started by this gateway, and unused for longer than the entry's idle_seconds."""
        used = self.last_used.get(entry.name)
        return bool(entry.image) and used is not None and now - used > entry.idle_seconds

    def stop(self, entry) -> None:
        """Remove the entry's containers (the next use starts one again)."""
        for c in self.client.containers.list(
            all=True, filters={"label": [f"{LABEL}={entry.name}", f"{OWNER_LABEL}={self.owner}"]}
        ):
            c.remove(force=True)
        self.last_used.pop(entry.name, None)
        logger.info(f'{{"event": "server_stopped_idle", "server": "{entry.name}"}}')

    def stop_idle(self, catalog, now: float | None = None) -> list[str]:
        """Stop and remove the containers idle longer than their entry's idle_seconds."""
        now = time.monotonic() if now is None else now
        idle = [entry for entry in catalog.servers if self.idle(entry, now)]
        for entry in idle:
            self.stop(entry)
        return [entry.name for entry in idle]

    async def close(self) -> None:
        """Remove every container this gateway started (on shutdown)."""

        def remove_all():
            for c in self.client.containers.list(
                all=True, filters={"label": f"{OWNER_LABEL}={self.owner}"}
            ):
                c.remove(force=True)

        await asyncio.to_thread(remove_all)
