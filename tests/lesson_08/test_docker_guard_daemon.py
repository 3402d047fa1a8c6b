"""The Docker guard as `python -m lesson08.docker_guard` in front of this machine's Docker
(marker `container`, `make mcp-test`), and what the daemon saw. A tools guard lets the launcher
start its server, refuses every attacker's create (no container exists after it) and a start with
a body (the container's HostConfig is unchanged). A sandbox guard runs lesson 04's SandboxRunner,
fresh, pooled and swept, and refuses the same bodies and anything about another owner's
containers."""

import contextlib
import json
import os
import time
import uuid

import docker
import httpx
import pytest

from lesson08.catalog import Catalog, ServerEntry
from lesson08.launcher import OWNER_LABEL, DockerLauncher
from research_agent.sandbox.pool import ContainerPool
from research_agent.sandbox.runner import LABEL, SandboxConfig, SandboxRunner
from research_agent.sandbox.sweep import Sweeper
from support.ports import free_port
from support.waiting import answers_200, wait_for
from tests.support.docker_guard import (
    API,
    ATTACKS,
    START_BODY,
    exit_watch_events,
    guard_process,
    launcher_create,
    sandbox_create,
)

pytestmark = [pytest.mark.container, pytest.mark.xdist_group("lesson08-guard")]

RUN = uuid.uuid4().hex[:8]
OWNER, SANDBOX_OWNER, OTHER = f"guardtest-{RUN}", f"guardtest-sandbox-{RUN}", f"other-{RUN}"
SOCKET_GID = str(os.stat("/var/run/docker.sock").st_gid)
# make mcp-test builds it; another tag runs this suite against an image of your own.
GATEWAY_IMAGE = os.environ.get("LESSON08_GATEWAY_IMAGE", "lesson08-gateway")


@pytest.fixture(scope="module")
def engine():
    client = docker.from_env()
    yield client
    for key in (OWNER_LABEL, f"{LABEL}.owner"):
        for owner in (OWNER, SANDBOX_OWNER, OTHER):
            filters = {"label": f"{key}={owner}"}
            for container in client.containers.list(all=True, sparse=True, filters=filters):
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
    client.close()


@pytest.fixture(scope="module")
def network(engine):
    tools = engine.networks.create(f"guardtest-{RUN}_tools", internal=True)
    yield tools.name
    tools.remove()


@pytest.fixture(scope="module")
def sandbox_network(engine):
    """The one more network the python server joins (its sandbox guard's, in Compose)."""
    own = engine.networks.create(f"guardtest-{RUN}_sandbox", internal=True)
    yield own.name
    own.remove()


@pytest.fixture(scope="module")
def tools_guard(engine, network, sandbox_network, tmp_path_factory):
    logs = tmp_path_factory.mktemp("guard-tools")
    settings = dict(
        GUARD_OWNER=OWNER,
        GUARD_IMAGES="python:3.11-slim",
        GUARD_NETWORK=network,
        GUARD_SERVER_NETWORKS=f"python={sandbox_network}",
    )
    with (
        guard_process(logs, GUARD_POLICY="tools", **settings) as guard,
        httpx.Client(base_url=guard.url, timeout=60) as http,
    ):
        yield http


@pytest.fixture(scope="module")
def sandbox_guard(engine, tmp_path_factory):
    logs = tmp_path_factory.mktemp("guard-sandbox")
    images = "agent-sandbox:python"
    with (
        guard_process(
            logs, GUARD_POLICY="sandbox", GUARD_OWNER=SANDBOX_OWNER, GUARD_IMAGES=images
        ) as guard,
        httpx.Client(base_url=guard.url, timeout=60) as http,
    ):
        yield http


@pytest.fixture
def through(sandbox_guard, monkeypatch):
    """The Docker SDK, for code that makes its own client (docker.from_env), via the guard."""
    monkeypatch.setenv("DOCKER_HOST", str(sandbox_guard.base_url).rstrip("/"))


def compliant(network: str) -> tuple[dict, dict]:
    return launcher_create(owner=OWNER, network=network, image="python:3.11-slim")


def post_create(http: httpx.Client, body: bytes, params: dict) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return http.post(f"/v{API}/containers/create", params=params, content=body, headers=headers)


def named(engine, name: str) -> list:
    return engine.containers.list(all=True, filters={"name": f"^/{name}$"})


def sandboxes(engine, owner: str = SANDBOX_OWNER) -> list:
    return engine.containers.list(
        all=True, sparse=True, filters={"label": f"{LABEL}.owner={owner}"}
    )


@pytest.fixture
def no_tool_container(engine):
    """The name the launcher's create uses: free before the test, removed after it."""
    name = f"{OWNER}-notes"
    assert named(engine, name) == []
    yield name
    for container in named(engine, name):
        container.remove(force=True)


# The tools policy: the gateway's launcher.


def test_the_launchers_create_passes_with_its_limits(
    engine, network, tools_guard, no_tool_container
):
    body, params = compliant(network)
    created = post_create(tools_guard, json.dumps(body).encode(), params)
    assert created.status_code == 201, created.text
    host = engine.api.inspect_container(no_tool_container)["HostConfig"]
    assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and not host["Privileged"]
    assert host["Binds"] is None and host["NetworkMode"] == network


def test_the_launcher_starts_and_removes_its_server_through_the_guard(
    engine, network, tools_guard, no_tool_container
):
    client = docker.DockerClient(base_url=str(tools_guard.base_url).rstrip("/"))
    launcher = DockerLauncher(owner=OWNER, network=network, internet_network=None, client=client)
    entry = ServerEntry(name="notes", image="python:3.11-slim", idle_seconds=0)
    launcher._start(entry)
    launcher._start(entry)  # a leftover is removed first, through the guard too
    assert len(named(engine, no_tool_container)) == 1
    launcher.touch(entry)
    assert launcher.stop_idle(Catalog(servers=[entry]), now=launcher.last_used["notes"] + 1) == [
        "notes"
    ]
    assert named(engine, no_tool_container) == []
    client.close()


def test_only_the_python_server_joins_its_guards_network_through_the_guard(
    engine, network, sandbox_network, tools_guard, no_tool_container
):
    client = docker.DockerClient(base_url=str(tools_guard.base_url).rstrip("/"))
    launcher = DockerLauncher(owner=OWNER, network=network, internet_network=None, client=client)
    joins = "{owner}_sandbox"  # as catalog.yaml writes it: the fixture's network
    assert joins.replace("{owner}", OWNER) == sandbox_network
    python = ServerEntry(name="python", image="python:3.11-slim", network=joins)
    try:
        launcher._start(python)
        joined = engine.api.inspect_container(f"{OWNER}-python")["NetworkSettings"]["Networks"]
        assert set(joined) == {network, sandbox_network}
        # The notes server may not: the guard checks the container's server label, whatever
        # the catalog says.
        with pytest.raises(docker.errors.APIError, match="is not the python server"):
            launcher._start(ServerEntry(name="notes", image="python:3.11-slim", network=joins))
        assert named(engine, no_tool_container) == []  # removed, not left half-made
        # Nor the python server to any other network.
        with pytest.raises(docker.errors.APIError, match="no catalog server joins"):
            client.api.connect_container_to_network(f"{OWNER}-python", "bridge")
    finally:
        for container in named(engine, f"{OWNER}-python"):
            container.remove(force=True)
        client.close()


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_every_attackers_create_is_refused_and_no_container_exists(
    engine, network, tools_guard, no_tool_container, attack
):
    body, params = compliant(network)
    answer = post_create(tools_guard, attack.change(body), params)
    assert answer.status_code == 403, answer.text
    assert "refused by the lesson 08 Docker guard" in answer.json()["message"]
    assert named(engine, no_tool_container) == []


@pytest.mark.parametrize("version", ["1.23", API])
def test_a_start_with_a_body_is_refused_and_the_host_config_is_unchanged(
    engine, network, tools_guard, no_tool_container, version
):
    body, params = compliant(network)
    assert post_create(tools_guard, json.dumps(body).encode(), params).status_code == 201
    before = engine.api.inspect_container(no_tool_container)["HostConfig"]
    hostile = json.loads(json.dumps(START_BODY).replace('"105"', f'"{SOCKET_GID}"'))
    answer = tools_guard.post(f"/v{version}/containers/{no_tool_container}/start", json=hostile)
    assert answer.status_code == 403, answer.text
    seen = engine.api.inspect_container(no_tool_container)
    assert seen["HostConfig"] == before and seen["State"]["Status"] == "created"
    assert seen["HostConfig"]["Binds"] is None and seen["HostConfig"]["GroupAdd"] is None
    # The launcher's own start, without a body, passes.
    assert tools_guard.post(f"/v{API}/containers/{no_tool_container}/start").status_code == 204


@pytest.mark.parametrize("version", ["1.23", "1.40", None])
def test_a_create_at_another_api_version_is_refused(
    engine, network, tools_guard, no_tool_container, version
):
    body, params = compliant(network)
    path = "/containers/create" if version is None else f"/v{version}/containers/create"
    answer = tools_guard.post(
        path, params=params, content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 403 and "API version" in answer.text
    assert named(engine, no_tool_container) == []


def test_another_owners_container_is_out_of_reach(engine, tools_guard):
    other = engine.containers.create("python:3.11-slim", labels={OWNER_LABEL: OTHER})
    try:
        for method, path in [
            ("GET", "/json"),
            ("POST", "/start"),
            ("POST", "/kill"),
            ("DELETE", ""),
        ]:
            answer = tools_guard.request(method, f"/v{API}/containers/{other.id}{path}")
            assert answer.status_code == 403, (method, path, answer.text)
        listing = tools_guard.get(
            f"/v{API}/containers/json",
            params={"all": 1, "filters": json.dumps({"label": [f"{OWNER_LABEL}={OTHER}"]})},
        )
        assert listing.status_code == 403
        other.reload()
        assert other.status == "created"
        assert tools_guard.get(f"/v{API}/containers/no-such-{RUN}/json").status_code == 404
    finally:
        other.remove(force=True)


# The sandbox policy: lesson 04's SandboxRunner behind the python server.


def test_a_sandbox_runs_through_the_guard_and_leaves_nothing(engine, through):
    runner = SandboxRunner(SandboxConfig(owner=SANDBOX_OWNER))
    try:
        result = runner.run("print(2**100)")
        assert (result.stdout, result.exit_code) == ("1267650600228229401496703205376\n", 0)
        looped = runner.run("while True: pass", timeout_seconds=2)
        assert looped.timed_out and looped.exit_code == 137
        flood = runner.run("import sys\nfor _ in range(10**6): sys.stdout.write('x' * 1000)")
        assert flood.truncated and len(flood.stdout) == runner.config.max_output_bytes
    finally:
        runner.close()
    wait_for(lambda: sandboxes(engine) == [], timeout=30, what="no sandbox container left")


def test_the_pool_serves_runs_through_the_guard(engine, through):
    runner = SandboxRunner(SandboxConfig(owner=SANDBOX_OWNER, pool_size=1, max_concurrent=2))
    pool = ContainerPool(runner)
    try:
        pool.start()
        wait_for(lambda: pool.idle_count == 1, timeout=60, what="a pooled container")
        assert pool.run("print(6 * 7)").stdout == "42\n"
        assert pool.served_by_pool == 1
    finally:
        pool.close()
        runner.close()
    wait_for(lambda: sandboxes(engine) == [], timeout=30, what="no sandbox container left")


def test_the_sweep_through_the_guard_removes_only_its_owners_leftovers(engine, through):
    """Two expired sandboxes, ours and another owner's: the sweep through the guard removes ours
    and cannot see the other. Any other sweeper on this engine (lesson 04's services sweep every
    owner's expired sandboxes, straight to the engine) may take either first; such a round proves
    nothing and is tried again, with new containers. A guard that let the other through shows as
    two removals, at once."""
    runner = SandboxRunner(SandboxConfig(owner=SANDBOX_OWNER))
    try:
        for _ in range(5):
            deadline = int(time.time()) + 2  # expired only just before the sweep
            expired = {f"{LABEL}.expires": str(deadline)}
            engine.containers.create(
                "agent-sandbox:python", labels={f"{LABEL}.owner": SANDBOX_OWNER, **expired}
            )
            other = engine.containers.create(
                "agent-sandbox:python", labels={f"{LABEL}.owner": OTHER, **expired}
            )
            time.sleep(max(0.0, deadline + 1 - time.time()))
            removed = Sweeper(runner).sweep()
            assert removed <= 1, "the sweep through the guard removed another owner's sandbox"
            others = [c.id for c in sandboxes(engine, OTHER)]
            clean = removed == 1 and others == [other.id] and sandboxes(engine) == []
            for container in [*sandboxes(engine), *sandboxes(engine, OTHER)]:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
            if clean:
                return
        pytest.fail("another sweeper took the sandboxes first in each of 5 rounds")
    finally:
        runner.close()


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_every_attackers_sandbox_is_refused_and_none_exists(engine, sandbox_guard, attack):
    body, params = sandbox_create(owner=SANDBOX_OWNER)
    answer = post_create(sandbox_guard, attack.change(body), params)
    assert answer.status_code == 403, answer.text
    assert sandboxes(engine) == []


def test_a_sandbox_guard_reaches_no_other_owners_container(engine, sandbox_guard):
    other = engine.containers.create(
        "agent-sandbox:python", labels={f"{LABEL}.owner": OTHER}, stdin_open=True
    )
    try:
        attach = f"/v{API}/containers/{other.id}/attach?stdin=1&stdout=1&stderr=1&stream=1"
        upgrade = {"Connection": "Upgrade", "Upgrade": "tcp"}
        for method, path, headers in [
            ("POST", attach, upgrade),
            ("POST", f"/v{API}/containers/{other.id}/start", {}),
            ("POST", f"/v{API}/containers/{other.id}/kill", {}),
            ("DELETE", f"/v{API}/containers/{other.id}?force=True", {}),
            ("GET", exit_watch_events(other.id), {}),
        ]:
            answer = sandbox_guard.request(method, path, headers=headers)
            assert answer.status_code == 403, (method, path, answer.text)
        other.reload()
        assert other.status == "created"
    finally:
        other.remove(force=True)


def test_events_without_an_end_and_runtimes_beyond_their_names_are_not_given(sandbox_guard):
    answer = sandbox_guard.get(
        f"/v{API}/events", params={"filters": json.dumps({"event": ["die"]})}
    )
    assert answer.status_code == 403
    info = sandbox_guard.get(f"/v{API}/info")
    assert info.status_code == 200 and list(info.json()) == ["Runtimes"]
    assert "runc" in info.json()["Runtimes"] and all(
        v == {} for v in info.json()["Runtimes"].values()
    )


def test_a_body_over_the_limit_is_refused_unread(engine, sandbox_guard):
    body, params = sandbox_create(owner=SANDBOX_OWNER)
    body["Labels"]["padding"] = "x" * (2 * 1024 * 1024)
    assert post_create(sandbox_guard, json.dumps(body).encode(), params).status_code == 413
    assert sandboxes(engine) == []


def test_event_streams_and_attached_containers_are_bounded_in_number(engine, tmp_path):
    with guard_process(
        tmp_path,
        GUARD_POLICY="sandbox",
        GUARD_OWNER=SANDBOX_OWNER,
        GUARD_IMAGES="agent-sandbox:python",
        GUARD_MAX_STREAMS=1,
    ) as guard:
        body, params = sandbox_create(owner=SANDBOX_OWNER)
        with httpx.Client(base_url=guard.url, timeout=30) as http:
            created = post_create(http, json.dumps(body).encode(), params).json()["Id"]
            target = exit_watch_events(created, within=5)
            with http.stream("GET", target) as first:
                assert first.status_code == 200
                second = http.get(target)
                assert second.status_code == 429, second.text
            # Without the upgrade, an attach is refused: the guard relays only an upgraded one.
            attach = f"/v{API}/containers/{created}/attach?stdin=1&stdout=1&stderr=1&stream=1"
            assert http.post(attach).status_code == 403
            assert http.delete(f"/v{API}/containers/{created}?force=True").status_code == 204
    assert sandboxes(engine) == []


def test_the_gateway_images_guard_runs_a_sandbox(engine, monkeypatch):
    """What the python server gets in Compose: the gateway's image running the guard with
    GUARD_POLICY=sandbox, as nobody plus the socket's group, read-only, with no capabilities."""
    port = free_port()
    guard = engine.containers.run(
        GATEWAY_IMAGE,
        ["python", "-m", "lesson08.docker_guard"],
        name=f"guardtest-image-{RUN}",
        detach=True,
        environment={
            "GUARD_POLICY": "sandbox",
            "GUARD_OWNER": SANDBOX_OWNER,
            "GUARD_IMAGES": "agent-sandbox:python",
        },
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}},
        group_add=[SOCKET_GID],
        ports={"2375/tcp": ("127.0.0.1", port)},
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: pings(url), timeout=60, what="the guard's container")
        monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{port}")
        runner = SandboxRunner(SandboxConfig(owner=SANDBOX_OWNER))
        try:
            result = runner.run("print(2**100)")
        finally:
            runner.close()
        assert (result.stdout, result.exit_code) == ("1267650600228229401496703205376\n", 0)
        body, params = sandbox_create(owner=SANDBOX_OWNER)
        refused = httpx.post(
            f"{url}/v{API}/containers/create",
            content=ATTACKS[0].change(body),
            headers={"content-type": "application/json"},
        )
        assert refused.status_code == 403
    finally:
        guard.remove(force=True)
    wait_for(lambda: sandboxes(engine) == [], timeout=30, what="no sandbox container left")


def pings(url: str) -> bool:
    return answers_200(f"{url}/_ping")
