"""What the gateway asks Docker for when it starts a tool server (no Docker needed to check)."""

import asyncio
import threading
import time

import docker

from lesson08.catalog import Catalog, ServerEntry
from lesson08.launcher import OWNER_LABEL, DockerLauncher, container_environment


def entry(**fields) -> ServerEntry:
    return ServerEntry(name="search", image="lesson08-notes", **fields)


def test_a_server_gets_only_the_secrets_it_declares():
    gateway_env = {"OPENAI_API_KEY": "sk-agent", "SEARCH_API_KEY": "s3", "HOME": "/root"}
    env = container_environment(entry(secrets=["SEARCH_API_KEY"], env={"MODE": "x"}), gateway_env)
    assert env == {"MODE": "x", "SEARCH_API_KEY": "s3"}
    assert container_environment(entry(), gateway_env) == {}


def test_containers_are_limited_labelled_and_on_the_tools_network(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-pass")
    launcher = DockerLauncher(owner="lesson08", network="lesson08_tools", internet_network=None)
    kwargs = launcher.run_kwargs(entry(memory="128m", cpus=0.25, pids=32))
    assert kwargs["labels"][OWNER_LABEL] == "lesson08"
    assert kwargs["network"] == "lesson08_tools"
    assert (kwargs["mem_limit"], kwargs["memswap_limit"]) == ("128m", "128m")
    assert kwargs["nano_cpus"] == 250_000_000 and kwargs["pids_limit"] == 32
    assert kwargs["read_only"] and kwargs["cap_drop"] == ["ALL"]
    assert kwargs["user"] == "65534:65534"
    assert "no-new-privileges" in kwargs["security_opt"]
    assert "OPENAI_API_KEY" not in kwargs["environment"]


def test_idle_servers_are_stopped_and_used_ones_kept():
    removed = []

    class FakeContainer:
        def __init__(self, name):
            self.name = name

        def remove(self, force):
            removed.append(self.name)

    class FakeContainers:
        def list(self, all, filters):
            return [FakeContainer(filters["label"][0])]

    class FakeDocker:
        containers = FakeContainers()

    launcher = DockerLauncher(
        owner="lesson08", network="n", internet_network=None, client=FakeDocker()
    )
    catalog = Catalog(servers=[entry(idle_seconds=10), ServerEntry(name="busy", image="x")])
    launcher.last_used = {"search": 100.0, "busy": 105.0}
    assert launcher.stop_idle(catalog, now=112.0) == ["search"]
    assert removed == ["lesson08.server=search"]
    assert "busy" in launcher.last_used


class SlowlyRemovedServer:
    """A Docker client with one running server whose removal takes until `release` is set, and a
    `_healthy` that answers while a container runs."""

    def __init__(self):
        self.events, self.running = [], True
        self.removing, self.release = threading.Event(), threading.Event()
        self.containers = self

    def list(self, all, filters):
        return [self] if self.running else []

    def remove(self, force):
        self.events.append("removing")
        self.removing.set()
        assert self.release.wait(10)
        self.running = False
        self.events.append("removed")

    def get(self, name):
        raise docker.errors.NotFound("no such container")

    def run(self, **kwargs):
        self.events.append("started")
        self.running = True

    async def healthy(self, url, wait):
        return self.running


def test_a_first_use_during_the_idle_stop_waits_for_it_and_gets_a_new_container():
    """The CI failure behind this: the sweep had decided to remove an idle server and was removing
    it when a re-pin's listing asked for it; the old container still answered /health, the listing
    was sent to it, the container went, and the listing waited for an answer until the operator's
    client gave up. The stop is now checked and done under the lock a first use takes."""
    server = SlowlyRemovedServer()
    launcher = DockerLauncher(owner="lesson08", network="n", internet_network=None, client=server)
    launcher._healthy = server.healthy
    notes = entry(idle_seconds=3)

    async def scenario():
        launcher.last_used["search"] = time.monotonic() - 10
        retire = asyncio.create_task(launcher.retire(notes))
        assert await asyncio.to_thread(server.removing.wait, 10)
        use = asyncio.create_task(launcher.url_for(notes))
        await asyncio.sleep(0.3)
        assert not use.done(), "a first use got the container being removed"
        server.release.set()
        assert await retire
        return await use

    assert asyncio.run(scenario()) == "http://lesson08-search:8000/mcp"
    assert server.events == ["removing", "removed", "started"]


def test_the_sweep_keeps_a_server_used_since_it_looked():
    server = SlowlyRemovedServer()
    launcher = DockerLauncher(owner="lesson08", network="n", internet_network=None, client=server)
    notes = entry(idle_seconds=3)
    launcher.last_used["search"] = time.monotonic() - 10
    assert launcher.idle(notes, time.monotonic())
    launcher.touch(notes)  # a call, between the sweep's look and its stop
    assert asyncio.run(launcher.retire(notes)) is False
    assert server.events == [] and "search" in launcher.last_used
