"""Lesson 06 on Swarm: code/lesson06/swarm/stack.yml and haproxy.cfg, read (make test), run
(swarm-test).

The static half checks what the files promise against each other and against the app: the shutdown
budget, the update order, dnsrr everywhere, HAProxy finding `tasks.agent` on the app's port and
checking a path the app serves. The live half (marker `container`) runs `make lesson-06` itself,
with a stack name and a free port of its own, and checks through HAProxy that 3 replicas answer,
request ids pass through, the cache is shared, streams are not buffered, each replica keeps its own
metrics, a broken image is rolled back while the old replicas keep serving, and that
`make lesson-06-down` leaves the engine as it found it.
"""

import contextlib
import os
import re
import secrets
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from research_agent.settings import ServerSettings, variables
from scripts import swarm
from support.ports import free_port
from support.waiting import wait_for
from tests.support.deploy import built_tags, get_paths, load_manifests

ROOT = Path(__file__).resolve().parents[2]

STACK = yaml.safe_load(swarm.STACK_FILE.read_text(encoding="utf-8"))
HAPROXY = swarm.HAPROXY_CFG.read_text(encoding="utf-8")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def seconds(duration: str) -> float:
    return sum(
        float(n) * {"h": 3600, "m": 60, "s": 1}[unit]
        for n, unit in re.findall(r"([\d.]+)(h|m|s)", duration)
    )


def section(config: str, header: str) -> list[str]:
    """The directives of one HAProxy section (`backend agents`), comments dropped."""
    lines, inside = [], False
    for line in config.splitlines():
        if line and not line[0].isspace():
            inside = line.strip() == header
            continue
        text = line.split("#", 1)[0].strip()
        if inside and text:
            lines.append(text)
    return lines


def directive(lines: list[str], name: str) -> str:
    found = [line[len(name) :].strip() for line in lines if f"{line} ".startswith(f"{name} ")]
    assert len(found) == 1, f"expected one `{name}`, found {found}"
    return found[0]


def agent_env(stack: dict) -> dict:
    return stack["services"]["agent"]["environment"]


# --- Static: what the files promise ---------------------------------------------------------------


def stack_problems(stack: dict, haproxy: str) -> list[str]:
    problems = []
    services = stack["services"]
    agent, proxy = services["agent"], services["haproxy"]
    for name, service in services.items():
        if service.get("deploy", {}).get("endpoint_mode") != "dnsrr":
            problems.append(f"{name}: no endpoint_mode dnsrr (service VIPs need IPVS)")
    update = agent["deploy"]["update_config"]
    if update.get("order") != "start-first" or update.get("failure_action") != "rollback":
        problems.append("agent: updates must start the new task first and roll back on failure")
    if agent["deploy"].get("rollback_config", {}).get("order") != "start-first":
        problems.append("agent: a rollback must start the old version first too")
    if "ports" in agent:
        problems.append("agent: only HAProxy publishes a port")
    (port,) = proxy["ports"]
    if port["mode"] != "host":
        problems.append("haproxy: publish in host mode (the routing mesh needs IPVS)")
    # A service's published port cannot name an address: it is open on every interface.
    if not str(agent_env(stack).get("API_KEYS", "")).startswith("${API_KEYS:?"):
        problems.append("agent: API_KEYS must be required (${API_KEYS:?...}): the port is public")
    if proxy["deploy"].get("update_config", {}).get("order") != "stop-first":
        problems.append("haproxy: a host-mode port cannot be held by two tasks: stop-first")
    bind = directive(section(haproxy, "frontend http"), "bind")
    if bind != f":{port['target']}":
        problems.append(f"haproxy: binds {bind}, the stack publishes {port['target']}")

    env = agent_env(stack)
    drain = float(env["SHUTDOWN_DRAIN_SECONDS"])
    grace = float(env["GRACEFUL_SHUTDOWN_SECONDS"])
    timeout = float(env["REQUEST_TIMEOUT_SECONDS"])
    if seconds(agent["stop_grace_period"]) <= drain + grace:
        problems.append("agent: stop_grace_period must exceed the drain plus the app's grace")
    if grace < timeout:
        problems.append("agent: GRACEFUL_SHUTDOWN_SECONDS below REQUEST_TIMEOUT_SECONDS")
    backend = section(haproxy, "backend agents")
    server = directive(backend, "default-server").split()
    inter = seconds(server[server.index("inter") + 1])
    fall = int(server[server.index("fall") + 1])
    if drain <= inter * fall:
        problems.append(f"drain {drain:g}s is shorter than HAProxy needs to see /ready fail")
    check = agent["healthcheck"]
    if seconds(check["interval"]) * check["retries"] < 30 or seconds(check["timeout"]) < 5:
        problems.append("agent: Swarm would replace a replica that is only slow under load")
    server_timeout = seconds(directive(section(haproxy, "defaults"), "timeout server"))
    if server_timeout <= timeout:
        problems.append("haproxy: `timeout server` must exceed REQUEST_TIMEOUT_SECONDS")
    return problems


def test_the_stack_keeps_its_promises():
    assert stack_problems(STACK, HAPROXY) == []


def redis_on_a_vip(stack: dict, haproxy: str) -> str:
    del stack["services"]["redis"]["deploy"]["endpoint_mode"]
    return haproxy


def agent_stops_first(stack: dict, haproxy: str) -> str:
    stack["services"]["agent"]["deploy"]["update_config"]["order"] = "stop-first"
    return haproxy


def grace_too_short(stack: dict, haproxy: str) -> str:
    stack["services"]["agent"]["stop_grace_period"] = "30s"
    return haproxy


def drain_too_short(stack: dict, haproxy: str) -> str:
    agent_env(stack)["SHUTDOWN_DRAIN_SECONDS"] = "1"
    return haproxy


def impatient_healthcheck(stack: dict, haproxy: str) -> str:
    stack["services"]["agent"]["healthcheck"].update(timeout="3s", retries=3)
    return haproxy


def keys_optional(stack: dict, haproxy: str) -> str:
    agent_env(stack)["API_KEYS"] = "${API_KEYS:-}"
    return haproxy


def wrong_bind(stack: dict, haproxy: str) -> str:
    return haproxy.replace("bind :8080", "bind :80")


def server_timeout_too_short(stack: dict, haproxy: str) -> str:
    return haproxy.replace("timeout server 60s", "timeout server 20s")


@pytest.mark.parametrize(
    "change",
    [
        redis_on_a_vip,
        agent_stops_first,
        grace_too_short,
        drain_too_short,
        impatient_healthcheck,
        keys_optional,
        wrong_bind,
        server_timeout_too_short,
    ],
)
def test_the_stack_check_catches_a_broken_copy(change):
    stack = yaml.safe_load(swarm.STACK_FILE.read_text(encoding="utf-8"))
    haproxy = change(stack, HAPROXY)
    assert stack_problems(stack, haproxy), f"{change.__name__}: nothing found"


def test_the_stack_refuses_to_deploy_without_api_keys():
    """Swarm opens a published port on every interface (a service's port cannot name an address,
    moby/moby#32299): with no keys, anyone on the learner's network could spend the model key.
    Before: API_KEYS defaulted to empty, and `docker stack deploy` ran an open API."""
    env = {k: v for k, v in os.environ.items() if k != "API_KEYS"}
    command = ["docker", "stack", "config", "-c", str(swarm.STACK_FILE)]
    if subprocess.run([*command[:3], "--help"], capture_output=True, timeout=60).returncode:
        pytest.skip("this Docker CLI has no `docker stack config` (Docker 25 and later have)")
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "required variable API_KEYS" in refused.stderr, refused
    env["API_KEYS"] = "k" * 32
    read = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert read.returncode == 0, read.stderr
    assert agent_env(yaml.safe_load(read.stdout))["API_KEYS"] == "k" * 32


def test_the_agent_reads_every_setting_the_stack_gives_it():
    assert set(agent_env(STACK)) <= set(variables())


def test_the_default_image_is_what_make_build_tags():
    image = re.fullmatch(r"\$\{AGENT_IMAGE:-(.+)\}", STACK["services"]["agent"]["image"]).group(1)
    assert image in built_tags()


def rendered(env: dict) -> dict:
    """stack.yml as `docker stack deploy` reads it with these variables (${VAR:-default})."""
    text = re.sub(
        r"\$\{(\w+):-([^}]*)\}",
        lambda m: env.get(m[1]) or m[2],
        swarm.STACK_FILE.read_text(encoding="utf-8"),
    )
    return yaml.safe_load(text)


def test_lesson_06_and_the_benchmark_ask_for_different_edge_subnets():
    # make lesson-06 is up, then make bench-scaleout deploys a stack of its own beside it: two
    # overlay networks that ask for one subnet cannot both exist, and the second stack never serves.
    networks = {"bridge": ["172.17.0.0/16"], "ingress": ["10.0.0.0/24"]}
    stacks = {}
    for stack in ("research-agent", "scaleout-1a2b3c"):
        env = swarm.stack_env(stack, free_port(), swarm.choose_edge_subnet(stack, networks))
        stacks[stack] = rendered(env)
        (ipam,) = stacks[stack]["networks"]["edge"]["ipam"]["config"]
        networks[f"{stack}_edge"] = [ipam["subnet"]]
        # The agents believe X-Forwarded-For from their own stack's HAProxy only.
        assert agent_env(stacks[stack])["FORWARDED_ALLOW_IPS"] == ipam["subnet"]
    assert networks["research-agent_edge"] != networks["scaleout-1a2b3c_edge"], networks
    # Deployed again, a stack asks for the subnet its network has already.
    assert (
        swarm.choose_edge_subnet("research-agent", networks) == networks["research-agent_edge"][0]
    )


def test_haproxy_finds_the_agent_tasks_on_the_apps_port_and_checks_a_real_path():
    backend = section(HAPROXY, "backend agents")
    _, slots, address = directive(backend, "server-template").split()
    assert address == f"tasks.agent:{ServerSettings.model_fields['PORT'].default}"
    assert int(slots) >= 3
    check = directive(backend, "option httpchk").split()
    assert check[0] == "GET" and check[1] == "/ready" and check[1] in get_paths()
    assert "resolvers docker" in directive(backend, "default-server")
    assert directive(section(HAPROXY, "resolvers docker"), "nameserver") == "dns 127.0.0.11:53"


def test_haproxy_retries_elsewhere_and_never_buffers_a_stream():
    backend = section(HAPROXY, "backend agents")
    assert "conn-failure" in directive(backend, "retry-on").split()
    assert int(directive(backend, "retries")) >= 1
    assert directive(backend, "option redispatch") == "1"
    # Compression and response buffering would hold SSE tokens back.
    assert not re.search(r"^\s*(compression|filter compression)", HAPROXY, flags=re.M)


# --- The lesson's mapping table quotes these files -----------------------------------------------

DOC = ROOT / "docs" / "06-scale-out.md"
# The files each column of the table quotes: Compose, Swarm, Kubernetes.
COLUMN_FILES = [
    [ROOT / "research-agent" / "docker-compose.yml"],
    [swarm.STACK_FILE, swarm.HAPROXY_CFG],
    sorted((ROOT / "code" / "lesson06" / "k8s").glob("*.yaml")),
]


def mapping_table() -> list[list[str]]:
    """The rows of the table in section 8 of docs/06, header and separator left out."""
    text = DOC.read_text(encoding="utf-8")
    section_8 = text[text.index("\n## 8. ") :]
    lines = [line for line in section_8.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return rows[2:]


def table_problems(rows: list[list[str]]) -> list[str]:
    def flat(text: str) -> str:
        return " ".join(text.split())

    sources = [flat(" ".join(f.read_text(encoding="utf-8") for f in fs)) for fs in COLUMN_FILES]
    problems = []
    for row in rows:
        for cell, source in zip(row[1:], sources, strict=True):
            for snippet in re.findall(r"`([^`]+)`", cell):
                if flat(snippet) not in source:
                    problems.append(f"{row[0]}: `{snippet}` is not in its column's files")
    return problems


def test_the_mapping_table_quotes_the_files_it_names():
    rows = mapping_table()
    assert len(rows) >= 15 and all(len(row) == 4 for row in rows)
    assert table_problems(rows) == []


def test_the_mapping_table_check_catches_a_value_that_drifted():
    rows = mapping_table()
    failed = next(row for row in rows if row[0] == "failed update")
    failed[2] = failed[2].replace("rollback", "pause")
    assert table_problems(rows) == [
        "failed update: `failure_action: pause` is not in its column's files"
    ]


def budget_row(where: str) -> list[str]:
    """A row of lesson 03's shutdown budget table, the one place the numbers are set out."""
    text = (ROOT / "docs" / "03-containers.md").read_text(encoding="utf-8")
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {where} ")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_lesson_03s_shutdown_budget_states_what_the_stack_and_the_manifests_set():
    env = agent_env(STACK)
    _, drain, grace, kill, _ = budget_row("Swarm (lesson 06)")
    assert (
        drain == f"{env['SHUTDOWN_DRAIN_SECONDS']} s"
        and grace == f"{env['GRACEFUL_SHUTDOWN_SECONDS']} s"
    )
    assert kill.startswith(f"{seconds(STACK['services']['agent']['stop_grace_period']):g} s ")

    manifests = {(m["kind"], m["metadata"]["name"]): m for m in load_manifests()}
    config = manifests[("ConfigMap", "research-agent-config")]["data"]
    pod = manifests[("Deployment", "research-agent")]["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    _, drain, grace, kill, _ = budget_row("Kubernetes (lesson 06)")
    assert drain == f"{config['SHUTDOWN_DRAIN_SECONDS']} s, after a {pre_stop} s `preStop` sleep"
    assert grace == f"{config['GRACEFUL_SHUTDOWN_SECONDS']} s"
    assert kill.startswith(f"{pod['terminationGracePeriodSeconds']} s ")


# --- Live: make lesson-06, for real ---------------------------------------------------------------


def engine_state(client, stack: str) -> dict:
    """What `make lesson-06` may add to the engine: Swarm, its networks, this stack's objects."""
    state = {
        "swarm": client.info()["Swarm"]["LocalNodeState"],
        "networks": sorted(
            n.name
            for n in client.networks.list()
            if n.name in ("docker_gwbridge", "ingress") or n.name.startswith(f"{stack}_")
        ),
    }
    state.update(swarm.leftovers(client, stack))
    return state


def make(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"make {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    )
    return result


class Lesson:
    def __init__(self):
        import docker

        self.client = docker.from_env()
        self.stack = f"l06-test-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.before = engine_state(self.client, self.stack)
        self.agent = swarm.service_name(self.stack, "agent")
        self.images = []  # images the tests built, removed once the stack is gone
        self.image = f"research-agent:{self.stack}"
        self.key = secrets.token_urlsafe(32)  # the stack's API_KEYS: /v1 asks for it
        self.auth = {"Authorization": f"Bearer {self.key}"}

    def up(self) -> str:
        # The image built from this checkout under a tag of its own (AGENT_IMAGE), so that another
        # build of research-agent:optimized on a shared machine cannot change what is tested.
        swarm.build_agent_image(self.image)
        self.images.append(self.image)
        return make("lesson-06", f"STACK={self.stack}", f"PORT={self.port}", env=self.env()).stdout

    def env(self) -> dict:
        return {"AGENT_IMAGE": self.image, "API_KEYS": self.key}

    def down(self) -> str:
        return make("lesson-06-down", f"STACK={self.stack}", timeout=300).stdout

    def containers(self):
        return [
            self.client.containers.get(t["Status"]["ContainerStatus"]["ContainerID"])
            for t in swarm.running_tasks(self.client, self.agent)
        ]


@pytest.fixture(scope="module")
def lesson():
    box = Lesson()
    box.output = box.up()
    try:
        yield box
    finally:
        if swarm.swarm_active(box.client) and box.client.services.list(
            filters={"label": f"{swarm.NAMESPACE}={box.stack}"}
        ):
            box.down()
        for image in box.images:
            box.client.images.remove(image)


def ask_twice_at_once(lesson: Lesson) -> list[dict]:
    """The lesson's `curl` twice, then as often again as there are replicas; every answer."""
    question = {"query": f"Why run several replicas? ({uuid.uuid4().hex[:6]})"}
    answers = []
    for _ in range(5):
        response = httpx.post(
            f"{lesson.url}/v1/research", json=question, headers=lesson.auth, timeout=60
        )
        assert response.status_code == 200, response.text
        answers.append({**response.json(), "served_by": response.headers["x-served-by"]})
    return answers


@pytest.mark.container
def test_a_question_asked_twice_right_after_make_lesson_06_is_cached(lesson):
    # The lesson's next step, at once and with no waiting of its own: make lesson-06 returns only
    # when every replica uses the shared Redis (Swarm starts them and Redis in no order).
    answers = ask_twice_at_once(lesson)
    assert [a["cached"] for a in answers] == [False, True, True, True, True], answers
    assert len({a["response"] for a in answers}) == 1
    # Hits on other replicas than the one that answered first: the cache is shared.
    assert len({a["served_by"] for a in answers}) > 1, answers


@pytest.mark.container
def test_make_lesson_06_returns_once_three_replicas_serve(lesson):
    assert f"Research agent on Swarm: {lesson.url}" in lesson.output
    assert f"make lesson-06-down STACK={lesson.stack}" in lesson.output
    assert swarm.up_servers(lesson.url) == 3
    # The commands the lesson shows to watch the stack.
    services = subprocess.run(
        ["docker", "service", "ls", "--filter", f"label={swarm.NAMESPACE}={lesson.stack}"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert re.search(rf"{lesson.agent}\s+replicated\s+3/3", services), services
    tasks = subprocess.run(
        ["docker", "service", "ps", lesson.agent], capture_output=True, text=True, timeout=30
    ).stdout
    assert len(re.findall(r"\sRunning\s+Running ", tasks)) == 3, tasks  # desired, current
    served_by = {httpx.get(f"{lesson.url}/health").headers["x-served-by"] for _ in range(12)}
    assert len(served_by) == 3, served_by


def outward_address() -> str | None:
    """This machine's address on its network (not loopback): where a neighbour reaches it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: picks a route, sends nothing
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


@pytest.mark.container
def test_a_neighbour_without_the_key_is_refused_on_the_open_port(lesson):
    """Swarm's port is open on every interface: a request from the network with no key gets 401.
    Before: API_KEYS was empty by default, and it got an answer, on the learner's model key."""
    address = outward_address() or pytest.skip("this machine has no address but loopback")
    url = f"http://{address}:{lesson.port}"
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200  # open there too
    question = {"query": "Why run several replicas?"}
    refused = httpx.post(f"{url}/v1/research", json=question, timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["type"] == "unauthorized"
    answered = httpx.post(f"{url}/v1/research", json=question, headers=lesson.auth, timeout=60)
    assert answered.status_code == 200, answered.text


@pytest.mark.container
def test_request_ids_pass_through_haproxy_to_the_agent(lesson):
    mine = f"lesson06-{uuid.uuid4().hex[:8]}"
    response = httpx.post(
        f"{lesson.url}/v1/research",
        json={"query": "What does a health check do?"},
        headers={"X-Request-ID": mine, **lesson.auth},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == mine == response.json()["request_id"]
    # Without one, or with one the agent would refuse, HAProxy makes a UUID (the agent's own ids
    # have no dashes), so HAProxy's log and the agent's log carry the same id.
    for headers in ({}, {"X-Request-ID": "not valid!"}):
        given = httpx.get(f"{lesson.url}/health", headers=headers).headers["x-request-id"]
        assert UUID4.match(given), given
    deadline, logs = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        logs = subprocess.run(
            ["docker", "service", "logs", "--raw", lesson.agent],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        proxy = subprocess.run(
            ["docker", "service", "logs", "--raw", swarm.service_name(lesson.stack, "haproxy")],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        if mine in logs and f"{{{mine}}}" in proxy:
            return
        time.sleep(1)
    pytest.fail(f"request id {mine} not found in both the agent's and HAProxy's logs")


@pytest.mark.container
def test_streams_pass_through_haproxy_token_by_token(lesson):
    arrivals = []
    with httpx.stream(
        "POST",
        f"{lesson.url}/v1/research/stream",
        json={"query": f"How does graceful shutdown work? ({uuid.uuid4().hex[:6]})"},
        headers=lesson.auth,
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event: token"):
                arrivals.append(time.monotonic())
            if line == "data: [DONE]":
                done = time.monotonic()
                break
    # ~150 tokens at 15 ms each: spread over two seconds unless something buffers them.
    assert len(arrivals) > 50
    assert done - arrivals[0] > 1.0, "the tokens arrived all at once: the stream was buffered"


def health_requests(exposition: str) -> float:
    """GET /health answered 200, from one replica's /metrics (route label `route` or `handler`)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "http_requests_total"
        and sample.labels.get("method") == "GET"
        and sample.labels.get("status") == "200"
        and "/health" in (sample.labels.get("route"), sample.labels.get("handler"))
    )


@pytest.mark.container
def test_each_replica_keeps_its_own_metrics(lesson):
    scrape = [
        "python",
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())",
    ]

    def counts() -> dict[str, float]:
        return {
            c.name: health_requests(c.exec_run(scrape).output.decode()) for c in lesson.containers()
        }

    before = counts()
    for _ in range(12):
        assert httpx.get(f"{lesson.url}/health").status_code == 200
    after = counts()
    deltas = {name: after[name] - before.get(name, 0) for name in after}
    assert sum(deltas.values()) == 12, deltas  # every request counted once, by one replica
    assert sum(d > 0 for d in deltas.values()) == 3, deltas


@pytest.mark.container
def test_a_version_that_cannot_start_is_rolled_back_while_the_old_one_serves(lesson):
    import io

    broken = f"research-agent:{lesson.stack}-broken"
    dockerfile = f'FROM {lesson.image}\nCMD ["python", "-c", "raise SystemExit(3)"]\n'.encode()
    lesson.client.images.build(fileobj=io.BytesIO(dockerfile), tag=broken, rm=True)
    lesson.images.append(broken)
    image_before = lesson.client.services.get(lesson.agent).attrs["Spec"]["TaskTemplate"][
        "ContainerSpec"
    ]["Image"]
    failures, stop = [], threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=lesson.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    if client.get("/ready").status_code != 200:
                        failures.append("not 200")
                except httpx.HTTPError as error:
                    failures.append(repr(error))
                time.sleep(0.2)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        subprocess.run(
            ["docker", "service", "update", "--detach", "--image", broken, lesson.agent],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline, state = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            state = lesson.client.services.get(lesson.agent).attrs.get("UpdateStatus", {})
            if state.get("State") == "rollback_completed":
                break
            time.sleep(1)
        assert state.get("State") == "rollback_completed", state
        spec = lesson.client.services.get(lesson.agent).attrs["Spec"]
        assert spec["TaskTemplate"]["ContainerSpec"]["Image"] == image_before
        swarm.wait_until_serving(lesson.client, lesson.stack, lesson.url, replicas=3)
    finally:
        stop.set()
        prober.join(30)
    assert failures == [], f"{len(failures)} failed /ready requests during the failed update"


@pytest.mark.container
def test_make_lesson_06_waits_for_replicas_that_started_before_redis(lesson):
    # What a first deploy can do on a slow machine, made certain: every replica starts while
    # Redis is not there, so each skips the cache until its breaker lets a probe through.
    redis = swarm.service_name(lesson.stack, "redis")
    docker = ["docker", "service"]
    subprocess.run([*docker, "scale", "--detach", f"{redis}=0"], check=True, timeout=60)
    wait_for(lambda: not swarm.running_tasks(lesson.client, redis), timeout=60, interval=1)
    for container in lesson.containers():
        container.stop(timeout=40)  # Swarm starts a new task for each

    def every_replica_skips_redis() -> bool:
        states = {}
        for _ in range(12):
            try:
                ready = httpx.get(f"{lesson.url}/ready", timeout=10)
                states[ready.headers["x-served-by"]] = ready.json()["cache"]
            except (httpx.HTTPError, KeyError, ValueError):
                return False
        return len(states) == 3 and set(states.values()) == {"bypassed"}

    wait_for(every_replica_skips_redis, timeout=180, interval=2)
    make("lesson-06", f"STACK={lesson.stack}", f"PORT={lesson.port}", env=lesson.env())
    answers = ask_twice_at_once(lesson)
    assert [a["cached"] for a in answers] == [False, True, True, True, True], answers


@contextlib.contextmanager
def neighbour(client):
    """A container on a network of its own, as a Compose project's: it finds its peers by name."""
    name = f"l06-neighbour-{uuid.uuid4().hex[:6]}"
    network = client.networks.create(name)
    container = client.containers.run(
        "python:3.11-slim", ["sleep", "600"], name=name, network=name, detach=True
    )
    try:
        yield name
    finally:
        container.remove(force=True)
        network.remove()


@pytest.mark.container
def test_make_lesson_06_down_leaves_the_engine_as_it_found_it(lesson):
    if lesson.before["swarm"] == "inactive":
        # The course joined Swarm. Leaving it would take Docker's DNS names from the containers
        # running on other networks (moby/moby#45144), so down keeps Swarm while one runs.
        with neighbour(lesson.client) as name:
            output = lesson.down()
            assert f"docker stack rm {lesson.stack}" in output
            assert "Swarm stays: leaving it would take the DNS names" in output, output
            assert name in output
            assert swarm.swarm_active(lesson.client)
        others = swarm.containers_named_on_networks(lesson.client)
        assert not others, f"stop these to let the course leave Swarm: {others}"
        output = lesson.down()
        assert "left Swarm (docker swarm leave --force)" in output, output
    else:
        output = lesson.down()
        assert f"docker stack rm {lesson.stack}" in output
    assert engine_state(lesson.client, lesson.stack) == lesson.before
