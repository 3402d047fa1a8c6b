"""What the gateway asks Docker for when it starts a tool server (no Docker needed to check)."""

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
