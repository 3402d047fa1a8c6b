"""The Docker guard's two policies, without Docker: each caller's own requests, as the Docker SDK
puts them on the wire, pass; the bodies attackers sent from inside the gateway's container, a
start with a body, an API version other than the pinned one and every request the caller never
makes are refused. test_docker_guard_daemon.py runs the guard in front of the real daemon."""

import json
import time
from urllib.parse import parse_qsl, urlencode

import pytest

from lesson08.guard_policy import Plan, Refused, Settings, plan, policy_for, strict_json
from tests.support.docker_guard import (
    API,
    ATTACKS,
    START_BODY,
    exit_watch_events,
    kept_sandbox_create,
    launcher_create,
    sandbox_create,
    sdk_sent,
)

TOOLS = Settings(GUARD_POLICY="tools", GUARD_OWNER="lesson08", GUARD_IMAGES="lesson08-notes")
SANDBOX = Settings(
    GUARD_POLICY="sandbox", GUARD_OWNER="lesson-08", GUARD_IMAGES="agent-sandbox:python"
)
# Lesson 10's replicas: the sandbox policy with the kept sandboxes of durable run_python.
KEPT = SANDBOX.model_copy(update={"GUARD_KEPT_SANDBOXES": True})
CALLERS = {
    "launcher": (TOOLS, launcher_create),
    "sandbox": (SANDBOX, sandbox_create),
    "kept-sandbox": (KEPT, lambda: kept_sandbox_create(owner="lesson-08")),
}
BODY_OF = {"tools": launcher_create, "sandbox": sandbox_create}


def ask(settings: Settings, method: str, target: str, body: bytes = b"") -> Plan:
    return plan(policy_for(settings), settings, API, method, target, body)


def create(settings: Settings, body: dict | bytes, params: dict) -> Plan:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    query = f"?{urlencode(params)}" if params else ""
    return ask(settings, "POST", f"/v{API}/containers/create{query}", raw)


def refused(call, *args, status: int = 403) -> str:
    with pytest.raises(Refused) as refusal:
        call(*args)
    assert refusal.value.status == status
    return str(refusal.value)


# The callers' own requests.


@pytest.mark.parametrize("caller", CALLERS)
def test_the_callers_own_create_passes_and_is_what_docker_gets(caller):
    settings, caller_create = CALLERS[caller]
    body, params = caller_create()
    sent = create(settings, body, params)
    assert (sent.kind, sent.params, json.loads(sent.body)) == ("plain", params, body)


@pytest.mark.parametrize(("timeout", "idle"), [(10, None), (10, 120), (30, None), (0.5, None)])
def test_fresh_and_pooled_sandbox_runs_pass(timeout, idle):
    body, params = sandbox_create(timeout=timeout, idle=idle)
    assert create(SANDBOX, body, params).kind == "plain"


def test_the_sandbox_under_gvisor_passes_only_where_the_guard_names_the_runtime():
    body, params = sandbox_create(runtime="runsc")
    assert "Runtime is never sent" in refused(create, SANDBOX, body, params)
    with_runsc = SANDBOX.model_copy(update={"GUARD_RUNTIME": "runsc"})
    assert create(with_runsc, body, params).kind == "plain"
    assert "Runtime is missing" in refused(create, with_runsc, *sandbox_create())


def test_the_launchers_calls_pass_for_a_container_to_be_checked():
    for method, target in [
        ("GET", "/version"),
        ("GET", "/_ping"),
        ("HEAD", "/_ping"),
        ("GET", f"/v{API}/containers/lesson08-notes/json"),
        ("POST", f"/v{API}/containers/0123abcd/start"),
        ("DELETE", f"/v{API}/containers/0123abcd?v=False&link=False&force=True"),
    ]:
        sent = ask(TOOLS, method, target)
        assert sent.kind == "plain"
    assert ask(TOOLS, "POST", f"/v{API}/containers/lesson08-notes/start").container == (
        "lesson08-notes"
    )


def test_the_sandboxs_calls_pass_each_for_its_container():
    attach = f"/v{API}/containers/0123abcd/attach?stdin=1&stdout=1&stderr=1&stream=1"
    assert ask(SANDBOX, "POST", attach) == Plan(
        "upgrade",
        f"/v{API}/containers/{{id}}/attach",
        dict.fromkeys(["stdin", "stdout", "stderr", "stream"], "1"),
        container="0123abcd",
    )
    watch = ask(SANDBOX, "GET", exit_watch_events("0123abcd"))
    assert (watch.kind, watch.container) == ("stream", "0123abcd")
    assert json.loads(watch.at("f" * 64).params["filters"]) == {
        "container": ["f" * 64],
        "event": ["oom", "die", "destroy"],
    }
    assert ask(SANDBOX, "GET", f"/v{API}/info").kind == "info"
    for method, verb in [("POST", "/start"), ("POST", "/kill"), ("DELETE", "")]:
        assert ask(SANDBOX, method, f"/v{API}/containers/0123abcd{verb}").container == "0123abcd"


# A1 and A2: the attackers' create bodies.


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_every_attackers_create_is_refused(caller, attack):
    settings, caller_create = CALLERS[caller]
    body, params = caller_create()
    assert create(settings, body, params).kind == "plain"  # the same body, unchanged, passes
    refused(create, settings, attack.change(body), params)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"a": {"b": {"c": 1, "c": 2}}}', "'c' and 'c'"),
        (b'{"Labels": {"lesson08.owner": "x", "Lesson08.Owner": "y"}}', "are one to Docker"),
        (b'{"HostConfig": {"Ulimits": [{"Name": "cpu", "name": "nofile"}]}}', "'Name' and 'name'"),
        (b'{"\xc5\xbfecurityOpt": [], "SecurityOpt": []}', "are one to Docker"),
        (b'{"Memory": NaN}', "NaN is not JSON"),
        (b'{"Image": "a"} {"Image": "b"}', "not strict JSON"),
        (b'{"Image": "\xff"}', "not strict JSON"),
    ],
)
def test_json_is_read_strictly_at_every_level(raw, why):
    assert why in refused(strict_json, raw)


@pytest.mark.parametrize(
    ("policy", "field", "value"),
    [
        ("tools", "ReadonlyRootfs", 1),  # 1 is not true
        ("tools", "Memory", 268435456.0),
        ("tools", "Memory", 1024 * 1024 * 1024),
        ("tools", "PidsLimit", 0),
        ("tools", "NanoCpus", 2_000_000_000),
        ("tools", "NetworkMode", "host"),
        ("sandbox", "Memory", 256 * 1024 * 1024),
        ("sandbox", "NetworkMode", "bridge"),
        ("sandbox", "Runtime", "runc"),
        ("sandbox", "Ulimits", [{"Name": "cpu", "Soft": 12, "Hard": 999}]),
        ("sandbox", "Ulimits", [{"Name": "cpu", "Soft": 100000, "Hard": 100000}]),
        ("sandbox", "Init", True),
        ("sandbox", "AutoRemove", False),
    ],
)
def test_a_limit_out_of_its_range_is_refused(policy, field, value):
    settings = TOOLS if policy == "tools" else SANDBOX
    body, params = BODY_OF[policy]()
    body["HostConfig"][field] = value
    assert f"HostConfig.{field}" in refused(create, settings, body, params)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("User", "0:0"),
        ("User", "1500000007:0"),
        ("User", "1499999999:1499999999"),
        ("Cmd", ["python", "-c", "import os; os.system('id')"]),
        ("Cmd", ["python", "-I", "-c", "print(1)", "12"]),
        ("Image", "python:3.11-slim"),
        ("Labels", {"agent-sandbox.owner": "someone-else"}),
        ("Env", ["LD_PRELOAD=/tmp/x.so"]),
        ("Entrypoint", ["sh"]),
        ("StdinOnce", False),
    ],
)
def test_a_sandbox_field_other_than_the_runners_is_refused(field, value):
    body, params = sandbox_create()
    body[field] = value
    refused(create, SANDBOX, body, params)


def test_the_sandbox_watchdogs_clock_is_bounded():
    body, params = sandbox_create()
    body["Cmd"][4] = "100000"
    assert "Cmd[4] must be seconds, at most 300" in refused(create, SANDBOX, body, params)


@pytest.mark.parametrize(
    "params",
    [{}, {"name": "lesson08-other"}, {"name": "someone-notes"}, {"name": "x", "platform": "linux"}],
)
def test_the_launchers_create_has_the_name_of_its_server_and_owner(params):
    body, _ = launcher_create()
    refused(create, TOOLS, body, params)


def test_a_sandbox_create_carries_no_name():
    body, _ = sandbox_create()
    refused(create, SANDBOX, body, {"name": "lesson-08-mine"})


# A3: a start that carries a HostConfig; and the API version.


@pytest.mark.parametrize("settings", [TOOLS, SANDBOX], ids=["tools", "sandbox"])
@pytest.mark.parametrize("version", ["1.23", API])
def test_a_start_with_a_body_is_refused(settings, version):
    target = f"/v{version}/containers/lesson08-notes/start"
    refused(ask, settings, "POST", target, json.dumps(START_BODY).encode())
    refused(ask, settings, "POST", f"/v{API}/containers/lesson08-notes/start", b"{}")


@pytest.mark.parametrize(
    "target",
    [
        "/v1.23/containers/create?name=lesson08-notes",
        "/v1.40/containers/create?name=lesson08-notes",
        "/v1.44/containers/create?name=lesson08-notes",
        "/containers/create?name=lesson08-notes",
        "/v1.41.0/containers/create?name=lesson08-notes",
        "/V1.41/containers/create?name=lesson08-notes",
    ],
)
def test_an_api_version_other_than_the_pinned_one_is_refused(target):
    body, _ = launcher_create()
    assert "API version" in refused(ask, TOOLS, "POST", target, json.dumps(body).encode())


def test_only_ping_and_version_are_forwarded_without_a_version():
    assert ask(TOOLS, "GET", "/version").path == "/version"
    assert ask(TOOLS, "GET", f"/v{API}/_ping").path == f"/v{API}/_ping"
    refused(ask, TOOLS, "GET", "/containers/lesson08-notes/json")
    refused(ask, TOOLS, "GET", "/v1.23/containers/lesson08-notes/json")


# Every other request.


@pytest.mark.parametrize("settings", [TOOLS, SANDBOX], ids=["tools", "sandbox"])
@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/containers/x/exec"),
        ("PUT", "/containers/x/archive?path=/"),
        ("GET", "/containers/x/archive?path=/etc"),
        ("POST", "/containers/x/update"),
        ("POST", "/containers/x/rename?name=y"),
        ("GET", "/containers/x/logs?stdout=1"),
        ("GET", "/containers/x/export"),
        ("POST", "/containers/x/attach/ws"),
        ("POST", "/networks/lesson08_tools/connect"),
        ("POST", "/networks/create"),
        ("POST", "/images/create?fromImage=alpine"),
        ("POST", "/build"),
        ("DELETE", "/images/lesson08-notes"),
        ("POST", "/volumes/create"),
        ("POST", "/swarm/init"),
        ("POST", "/containers/prune"),
        ("POST", "/containers/../start"),
        ("POST", "/containers/%2e%2e/start"),
        ("POST", "/containers/x/start?checkpoint=c"),
        ("DELETE", "/containers/x?link=True"),
        ("DELETE", "/containers/x?force=True&force=False"),
        ("GET", "/containers/json?all=1&filters=%7B%7D&filters=%7B%7D"),
    ],
)
def test_anything_else_is_refused(settings, method, target):
    refused(ask, settings, method, f"/v{API}{target}")


def test_the_launcher_gets_no_attach_no_events_no_info():
    refused(ask, TOOLS, "POST", f"/v{API}/containers/x/attach?stdin=1&stdout=1&stderr=1&stream=1")
    refused(ask, TOOLS, "GET", exit_watch_events("x"))
    refused(ask, TOOLS, "GET", f"/v{API}/info")


# The launcher joins the python server, and no other, to the sandbox guard's network.

JOINS = TOOLS.model_copy(update={"GUARD_SERVER_NETWORKS": "python=lesson08_sandbox"})


def launcher_join(container: str = "lesson08-python", network: str = "lesson08_sandbox"):
    """What DockerLauncher._start sends to join a server to its one more network."""
    path, body, params = sdk_sent(
        lambda client: client.api.connect_container_to_network(container, network)
    )
    assert params == {}
    return path, body.encode()


def test_the_python_server_joins_the_network_it_is_named_for():
    sent = ask(JOINS, "POST", *launcher_join())
    # The guard checks the container is the owner's python server, then sends its own body.
    assert (sent.kind, sent.container, sent.server) == ("plain", "lesson08-python", "python")
    full = sent.at("f" * 64)
    assert full.path == f"/v{API}/networks/lesson08_sandbox/connect"
    assert json.loads(full.body) == {"Container": "f" * 64, "EndpointConfig": {}}


@pytest.mark.parametrize(
    ("settings", "network", "body"),
    [
        (TOOLS, "lesson08_sandbox", None),  # no GUARD_SERVER_NETWORKS: no join at all
        (JOINS, "lesson08_tools", None),
        (JOINS, "bridge", None),
        (JOINS, "host", None),
        (JOINS, "lesson08_sandbox", {"Container": "x", "EndpointConfig": {"Aliases": ["docker"]}}),
        (JOINS, "lesson08_sandbox", {"Container": "x", "EndpointConfig": {"IPAMConfig": {}}}),
        (JOINS, "lesson08_sandbox", {"Container": "x", "EndpointConfig": {}, "Force": True}),
        (JOINS, "lesson08_sandbox", {"Container": "x"}),
        (JOINS, "lesson08_sandbox", {"Container": ["x"], "EndpointConfig": {}}),
        (JOINS, "lesson08_sandbox", {"Container": "../x", "EndpointConfig": {}}),
    ],
)
def test_a_join_to_another_network_or_with_more_than_the_container_is_refused(
    settings, network, body
):
    path, raw = launcher_join(network=network)
    refused(ask, settings, "POST", path, raw if body is None else json.dumps(body).encode())


def test_the_sandbox_guard_joins_nothing():
    refused(ask, SANDBOX, "POST", *launcher_join())


def test_the_sandbox_gets_no_inspect_stop_or_wait():
    for method, verb in [("GET", "/json"), ("POST", "/stop"), ("POST", "/wait")]:
        refused(ask, SANDBOX, method, f"/v{API}/containers/x{verb}")
    refused(ask, SANDBOX, "POST", f"/v{API}/containers/x/kill?signal=SIGSTOP")
    attach = f"/v{API}/containers/x/attach?stdin=1&stdout=1&stderr=1&stream=1"
    refused(ask, SANDBOX, "POST", attach + "&logs=1")
    refused(ask, SANDBOX, "POST", attach + "&detachKeys=ctrl-x")


# Lists and events: the owner's containers only, and bounded.


def listing(settings: Settings, filters: dict | str | None) -> dict:
    query = {"all": 1} | ({} if filters is None else {"filters": json.dumps(filters)})
    return json.loads(
        ask(settings, "GET", f"/v{API}/containers/json?{urlencode(query)}").params["filters"]
    )


def test_a_list_is_narrowed_to_the_owners_containers():
    assert listing(TOOLS, {"label": ["lesson08.server=notes", "lesson08.owner=lesson08"]}) == {
        "label": ["lesson08.server=notes", "lesson08.owner=lesson08"]
    }
    # The sweep asks for every owner's sandboxes; it gets its own.
    assert listing(SANDBOX, {"label": ["agent-sandbox.owner"]}) == {
        "label": ["agent-sandbox.owner=lesson-08"]
    }


@pytest.mark.parametrize(
    "filters",
    [
        None,
        {},
        {"label": []},
        {"label": ["lesson08.owner=someone-else"]},
        {"label": ["lesson08.owner=lesson08", "lesson08.owner=someone-else"]},
        {"label": ["lesson08.owner=lesson08"], "name": ["x"]},
        {"label": {"lesson08.owner=lesson08": True}},
        '{"label": ["lesson08.owner=lesson08"], "label": []}',
    ],
)
def test_a_list_beyond_the_owners_containers_is_refused(filters):
    query = (
        ""
        if filters is None
        else "&filters=" + (filters if isinstance(filters, str) else json.dumps(filters))
    )
    refused(ask, TOOLS, "GET", f"/v{API}/containers/json?all=1{query}")


@pytest.mark.parametrize(
    "change",
    [
        lambda q: q.pop("until"),
        lambda q: q.update(until=str(int(time.time()) + 3600)),
        lambda q: q.update(filters=json.dumps({"event": ["die"]})),
        lambda q: q.update(filters=json.dumps({"container": ["a", "b"], "event": ["die"]})),
        lambda q: q.update(filters=json.dumps({"container": ["a"], "event": ["exec_create"]})),
        lambda q: q.update(
            filters=json.dumps({"container": ["a"], "event": ["die"], "type": ["network"]})
        ),
        lambda q: q.update(filters=json.dumps({"container": ["../x"], "event": ["die"]})),
    ],
)
def test_events_beyond_one_container_or_without_an_end_are_refused(change):
    path, _, query = exit_watch_events("0123abcd").partition("?")
    params = dict(parse_qsl(query))
    change(params)
    refused(ask, SANDBOX, "GET", f"{path}?{urlencode(params)}")


# Lesson 10: the kept sandboxes of durable run_python, only where the guard is told to expect them.


def test_a_kept_sandbox_passes_only_where_the_guard_expects_kept_sandboxes():
    body, params = kept_sandbox_create(owner="lesson-08")
    refused(create, SANDBOX, body, params)
    assert json.loads(create(KEPT, body, params).body) == body
    # The plain sandbox still passes there, without a name.
    assert create(KEPT, *sandbox_create()).kind == "plain"
    refused(create, KEPT, sandbox_create()[0], params)


@pytest.mark.parametrize(
    "change",
    [
        lambda b, p: p.update(name="agent-sandbox-" + "1" * 32),  # another key's name
        lambda b, p: p.pop("name"),
        lambda b, p: b["Labels"].update({"agent-sandbox.key": "lesson08-notes"}),
        lambda b, p: b["HostConfig"].update(LogConfig={"Type": "json-file", "Config": {}}),
        lambda b, p: b["HostConfig"].update(
            LogConfig={"Type": "syslog", "Config": {"syslog-address": "udp://127.0.0.1:514"}}
        ),
        lambda b, p: b["HostConfig"].update(AutoRemove=True, RestartPolicy={"Name": "always"}),
        lambda b, p: b["Labels"].pop("agent-sandbox.request-id"),
    ],
    ids=["other-name", "no-name", "key-not-a-key", "unbounded-log", "syslog", "restart", "no-run"],
)
def test_a_kept_sandbox_other_than_the_keyed_sandboxs_is_refused(change):
    body, params = kept_sandbox_create(owner="lesson-08")
    change(body, params)
    refused(create, KEPT, body, params)


def test_the_keyed_sandbox_reads_its_own_containers_back_and_nothing_more():
    for target in [
        sdk_sent(lambda c: c.api.inspect_container("agent-sandbox-k"), via="_get")[0],
        "{}?{}".format(*sdk_logs(stdout=True, stderr=False)),
        "{}?{}".format(*sdk_logs(stdout=False, stderr=True)),
    ]:
        sent = ask(KEPT, "GET", target)
        assert (sent.kind, sent.container) == ("plain", "agent-sandbox-k")
        refused(ask, SANDBOX, "GET", target)  # lesson 08's python server reads none of it
    wait = sdk_sent(lambda c: c.api.wait("agent-sandbox-k"))[0]
    assert ask(KEPT, "POST", wait).kind == "wait"
    assert ask(KEPT, "POST", f"{wait}?condition=removed").kind == "wait"
    for target in [
        "{}?{}".format(*sdk_logs(stdout=True, stderr=False)).replace("follow=0", "follow=1"),
        "{}?{}".format(*sdk_logs(stdout=True, stderr=False)) + "&since=0",
        "{}?{}".format(*sdk_logs(stdout=True, stderr=False)).replace("tail=all", "tail=10"),
        f"/v{API}/containers/agent-sandbox-k/stats",
        f"/v{API}/containers/agent-sandbox-k/top",
        f"/v{API}/containers/agent-sandbox-k/archive?path=/",
    ]:
        refused(ask, KEPT, "GET", target)
    for verb in ["/stop", "/restart", "/update", "/exec", "/pause"]:
        refused(ask, KEPT, "POST", f"/v{API}/containers/agent-sandbox-k{verb}")


def sdk_logs(**kwargs) -> tuple[str, str]:
    path, _, params = sdk_sent(lambda c: c.api.logs("agent-sandbox-k", **kwargs), via="_get")
    return path, urlencode(params)
