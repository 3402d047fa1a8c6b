"""Each egress run's network of its own (research-agent/research_agent/sandbox/egress.py), in real
containers: made with the run's container, with the proxy and that container as its only members,
removed with the container; one a crash left behind (its container gone, the network not) goes at
the next sweep of any egress runner, while one whose container is still there stays. Marker
`container`: `make sandbox-test`. test_egress_runner.py attacks it (two runs at once)."""

import ipaddress
import time
import types
import uuid

import pytest

from research_agent.sandbox import egress as sandbox_egress
from research_agent.sandbox.egress import EGRESS_LABEL, RUN_LABEL, EgressGateway, run_of
from research_agent.sandbox.runner import SandboxRunner
from research_agent.sandbox.sweep import Sweeper
from research_agent.settings import SandboxConfig
from support import egress

pytestmark = pytest.mark.container


def egress_runner(owner: str) -> SandboxRunner:
    config = SandboxConfig(owner=owner, egress="allowlist", allowed_hosts=egress.ALLOWED)
    return SandboxRunner(config, network=EgressGateway(config))


@pytest.fixture
def runner(engine):
    egress.build_images()
    runner = egress_runner(f"test-{uuid.uuid4().hex[:12]}")
    yield runner
    runner.close()
    mine = {"label": f"{EGRESS_LABEL}={runner.config.owner}"}
    assert not engine.networks.list(filters=mine)
    assert not engine.containers.list(all=True, filters=mine)


def run_networks(engine, owner: str) -> dict[str, dict]:
    """The owner's run networks, by run id, as Docker describes them."""
    found = engine.networks.list(filters={"label": [f"{EGRESS_LABEL}={owner}", RUN_LABEL]})
    return {n.attrs["Labels"][RUN_LABEL]: engine.api.inspect_network(n.id) for n in found}


def test_a_run_has_a_network_of_its_own_removed_with_its_container(runner, engine):
    uid = runner.take_uid()
    # Made ahead, as the pool does: its network is there, with the proxy only, until a run takes it.
    container = runner.create(10, "ahead", uid, idle=30)
    run = run_of(container)
    (network,) = run_networks(engine, runner.config.owner).values()
    assert network["Labels"][RUN_LABEL] == run
    assert network["Internal"] is True
    assert network["Options"]["com.docker.network.bridge.inhibit_ipv4"] == "true"
    subnet = ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])
    assert subnet.prefixlen == 29 and subnet.subnet_of(ipaddress.ip_network("10.213.0.0/16"))
    proxy = runner.network.proxy
    container.start()  # its watchdog waits for a run's first line
    assert set(network["Containers"]) == {proxy.id}
    runner.join(container, "ahead")
    (network,) = run_networks(engine, runner.config.owner).values()
    assert set(network["Containers"]) == {proxy.id, container.id}
    runner.discard(container)
    assert run_networks(engine, runner.config.owner) == {}
    runner.free_uid(uid)
    # A fresh run: its network lives as long as its container.
    result = runner.run("import os; print(os.environ['HTTP_PROXY'].rsplit('@')[1])", 10, "fresh")
    address = ipaddress.ip_address(result.stdout.split(":")[0])
    assert address in ipaddress.ip_network("10.213.0.0/16"), result
    assert run_networks(engine, runner.config.owner) == {}


def test_a_network_a_crash_left_is_swept_and_one_in_use_is_kept(runner, engine, monkeypatch):
    runner.network.start()
    owner, real = runner.config.owner, time.time
    # Both made an hour ago, past the sweep's grace.
    an_hour_ago = types.SimpleNamespace(
        time=lambda: real() - 3600, monotonic=time.monotonic, sleep=time.sleep
    )
    uid = runner.take_uid()
    with monkeypatch.context() as patch:
        patch.setattr(sandbox_egress, "time", an_hour_ago)
        # As a crash leaves it: the run's network made, the runner gone before its container.
        runner.network.options("crashed", made_ahead=False)
        # In use: a container made ahead, waiting for its run.
        live = runner.create(10, "live", uid, idle=60)
    assert len(run_networks(engine, owner)) == 2
    # Another service's sweep (the one with egress, here a runner that never ran anything).
    other = egress_runner(f"{owner}-other")
    try:
        assert Sweeper(other).sweep() >= 1
    finally:
        other.close()
    assert set(run_networks(engine, owner)) == {run_of(live)}
    runner.network.proxy.reload()
    assert runner.network.proxy.status == "running"  # disconnected from it, still serving
    runner.discard(live)
    runner.free_uid(uid)
