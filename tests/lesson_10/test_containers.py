"""`make durable-test`: lesson 10's Compose stack for real (edge, two replicas, Postgres, lesson
08's Docker guard) and kill -9 (`docker kill -s KILL`, not `docker stop`) of the replica holding a
run, at the three moments of docs/10: while the run waits for a person, during a model call, while
run_python runs (its sandbox started through the guard). Then two decisions racing through the
edge; lesson 08's hostile requests to the guard, sent from inside a replica; and `down -v` leaving
nothing."""

import base64
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from support.ports import free_port
from support.waiting import wait_for
from tests.lesson_10.conftest import events
from tests.support.docker_cli import NO_COMPOSE_V2, ContainerStarts, compose_v2, docker
from tests.support.docker_guard import (
    API,
    ATTACKS,
    START_BODY,
    exit_watch_events,
    kept_sandbox_create,
    sandbox_create,
)

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "code" / "lesson10" / "compose.yaml"
PROJECT = f"lesson10test{os.getpid()}"
OWNER = PROJECT  # the sandboxes' owner label: this stack's only
ANSWER = "1267650600228229401496703205376"


class Stack:
    def __init__(self):
        self.port = free_port()
        self.env = {
            **os.environ,
            "LESSON10_PORT": str(self.port),
            "LESSON10_IMAGE": os.environ.get("LESSON10_IMAGE", "lesson-10-agent"),
            "LESSON10_POSTGRES_PASSWORD": secrets.token_hex(16),
            "LESSON10_AGENT_PASSWORD": secrets.token_hex(16),
            "LESSON10_SANDBOX_OWNER": OWNER,
            "LEASE_SECONDS": "3",
            # Seconds for the answer's model call: long enough to be killed in.
            "OFFLINE_TOKEN_DELAY_MS": "400",
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        }
        self.url = f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, timeout: float = 900) -> str:
        done = subprocess.run(
            ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), *args],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )  # fmt: skip
        assert done.returncode == 0, f"compose {args}: {done.stdout}{done.stderr}"
        return done.stdout

    def sql(self, query: str) -> str:
        return self.compose("exec", "-T", "postgres", "psql", "-U", "postgres", "-d", "runs",
                            "-tAc", query).strip()  # fmt: skip

    def python(self, service: str, script: str, stdin: str) -> str:
        """`script` run by the service's own Python, inside its container, fed `stdin`."""
        done = subprocess.run(
            ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE), "exec", "-T", service,
             "python", "-c", script],
            input=stdin, capture_output=True, text=True, env=self.env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{service}: {done.stdout}{done.stderr}"
        return done.stdout

    def kill9(self, service: str) -> None:
        self.compose("kill", "-s", "SIGKILL", service)

    def holder(self, run_id: str) -> str:
        assert all(c in "0123456789abcdef" for c in run_id)
        return self.sql(f"SELECT lease_owner FROM agent.runs WHERE id = '{run_id}'")

    def client(self, token=None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def stack():
    if not compose_v2():
        pytest.skip(NO_COMPOSE_V2)
    s = Stack()
    try:
        s.compose("up", "-d", "--wait")
        yield s
    finally:
        s.compose("down", "-v", "--remove-orphans")
        leftovers = docker("ps", "-aq", "--filter", f"label=agent-sandbox.owner={OWNER}")
        for container in leftovers.split():
            docker("rm", "-f", container)
    # `down -v` left nothing of the project, and no run left a sandbox behind.
    project = f"label=com.docker.compose.project={PROJECT}"
    assert docker("ps", "-aq", "--filter", project) == ""
    assert docker("volume", "ls", "-q", "--filter", project) == ""
    assert docker("network", "ls", "-q", "--filter", project) == ""
    assert leftovers == ""


def start(stack) -> tuple[str, str]:
    with stack.client() as c:
        r = c.post("/v1/runs", json={"query": "What is 2**100?"})
    assert r.status_code == 202, r.text
    return r.json()["run_id"], r.json()["owner_token"]


def wait_state(stack, run_id, token, wanted, timeout=180) -> dict:
    def reached():
        try:
            with stack.client(token) as c:
                r = c.get(f"/v1/runs/{run_id}")
        except httpx.TransportError:
            return None  # the edge between replicas
        if r.status_code != 200:
            return None
        assert r.json()["state"] not in {"failed", "expired"} - {wanted}, r.json()
        return r.json() if r.json()["state"] == wanted else None

    return wait_for(reached, timeout=timeout, interval=0.3, what=f"{run_id} {wanted}")


def decide(stack, run_id, token, **body) -> httpx.Response:
    with stack.client(token) as c:
        return c.post(f"/v1/runs/{run_id}/decisions", json=body)


def check_finished(stack, starts: ContainerStarts, run_id, token, answer_part) -> None:
    done = wait_state(stack, run_id, token, "done")
    assert answer_part in done["answer"]
    streamed = events(stack, run_id, token)
    assert [e["id"] for e in streamed] == list(range(1, len(streamed) + 1))
    assert [e["type"] for e in streamed][-2:] == ["answer", "done"]
    ran = starts.per("agent-sandbox.request-id").get(run_id, 0)
    assert ran == 1, "the approved call ran once"


def restart_killed(stack) -> None:
    """The killed replicas come back (new processes), and the edge sends to them again: what
    was killed is waited for, then the edge's route to it."""
    stack.compose("up", "-d", "--wait", "--no-deps", "agent1", "agent2")

    def edge_ready():
        try:
            with stack.client() as c:
                return c.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(edge_ready, timeout=60, interval=0.5, what="the edge sending to a replica again")


def test_kill_9_while_a_run_waits_for_approval(stack):
    starts = ContainerStarts("agent-sandbox.request-id")  # followed live from here
    run_id, token = start(stack)
    pending = wait_state(stack, run_id, token, "waiting_for_approval")["pending"]
    assert stack.holder(run_id) == ""  # nobody holds a waiting run
    stack.kill9("agent1")
    stack.kill9("agent2")  # every process gone: only Postgres remembers the run
    restart_killed(stack)
    assert decide(stack, run_id, token, call_id=pending["call_id"], decision="approve").is_success
    check_finished(stack, starts, run_id, token, ANSWER)


def test_make_lesson_10_brings_back_both_replicas_after_the_edge_checked_without_them(stack):
    """docs/10, step 5: both replicas killed, then `make lesson-10` (`compose up -d --wait`).
    Compose gives up at once on a container it finds unhealthy, so the edge's own check must not
    fail for want of a replica: it failed five times running (Docker keeps the last five) while
    both were down, and `up --wait` said "container lesson10-edge-1 is unhealthy"."""
    edge = stack.compose("ps", "-q", "edge").strip()
    killed_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    stack.kill9("agent1")
    stack.kill9("agent2")

    def checks_since_the_kill() -> list[dict]:
        health = json.loads(docker("inspect", "-f", "{{json .State.Health}}", edge))
        return [check for check in health["Log"] if check["Start"] > killed_at]

    def five_checks() -> list[dict]:
        checks = checks_since_the_kill()
        return checks if len(checks) >= 5 else []

    checks = wait_for(five_checks, timeout=120, interval=1, what="five checks, both replicas down")
    assert [c["ExitCode"] for c in checks] == [0] * len(checks), checks
    stack.compose("up", "-d", "--wait")  # what `make lesson-10` runs
    restart_killed(stack)


def test_kill_9_during_a_model_call(stack):
    starts = ContainerStarts("agent-sandbox.request-id")  # followed live from here
    run_id, token = start(stack)
    pending = wait_state(stack, run_id, token, "waiting_for_approval")["pending"]
    assert decide(stack, run_id, token, call_id=pending["call_id"], decision="approve").is_success

    def answering():  # the tool's result is in; the model is writing the answer
        holder = stack.holder(run_id)
        types = stack.sql(
            f"SELECT string_agg(type, ',') FROM agent.events WHERE run_id = '{run_id}'"
        )
        return holder if "tool_result" in types and "answer" not in types and holder else None

    holder = wait_for(answering, timeout=120, interval=0.2, what="the answer's model call")
    stack.kill9(holder)
    check_finished(stack, starts, run_id, token, ANSWER)  # the other replica, once the lease ends
    restart_killed(stack)


def test_kill_9_while_run_python_runs(stack):
    starts = ContainerStarts("agent-sandbox.request-id")  # followed live from here
    run_id, token = start(stack)
    pending = wait_state(stack, run_id, token, "waiting_for_approval")["pending"]
    slow = "import time\ntime.sleep(5)\nprint(2**100)"
    r = decide(stack, run_id, token, call_id=pending["call_id"], decision="edit",
               args={"code": slow})  # fmt: skip
    assert r.is_success, r.text
    label = f"label=agent-sandbox.request-id={run_id}"
    wait_for(lambda: docker("ps", "-q", "--filter", label, "--filter", "status=running"),
             timeout=120, what="the run's sandbox running")  # fmt: skip
    stack.kill9(stack.holder(run_id))
    check_finished(stack, starts, run_id, token, f"printed {ANSWER}")
    restart_killed(stack)


def test_two_decisions_racing_through_the_edge(stack):
    run_id, token = start(stack)
    pending = wait_state(stack, run_id, token, "waiting_for_approval")["pending"]
    barrier, codes = threading.Barrier(2), []

    def send():
        barrier.wait(30)
        codes.append(decide(stack, run_id, token, call_id=pending["call_id"],
                            decision="reject").status_code)  # fmt: skip

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [202, 409]
    wait_state(stack, run_id, token, "done")


def test_a_replica_has_no_capability_and_cannot_gain_one(stack):
    """As code that took a replica over sees it: before, Docker's default bounding set, and a
    setuid program could raise it (NoNewPrivs 0)."""
    status = stack.python("agent1", "print(open('/proc/self/status').read())", "")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert int(fields["CapBnd"], 16) == 0 and int(fields["CapEff"], 16) == 0, fields["CapBnd"]
    assert fields["NoNewPrivs"].strip() == "1"


def test_the_edge_starts_no_run_for_a_page_under_a_foreign_host(stack):
    """DNS rebinding through the published port: before, the edge started the run (202)."""
    query = f"rebinding {secrets.token_hex(4)}"
    with stack.client() as c:
        r = c.post("/v1/runs", json={"query": query}, headers={"Host": "rebind.attacker.example"})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "untrusted_host"
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
        # The names the lesson's commands send, 127.0.0.1:PORT and localhost:PORT, are served.
        r = c.post("/v1/runs", json={"query": "hello"}, headers={"Host": f"localhost:{stack.port}"})
        assert r.status_code == 202, r.text
    assert stack.sql(f"SELECT count(*) FROM agent.runs WHERE query = '{query}'") == "0"


@pytest.mark.parametrize("compose", [["docker-compose"], ["docker", "compose"]], ids=["v1", "v2"])
def test_both_compose_versions_read_the_file_before_make_writes_its_env(compose, tmp_path):
    """Compose 1.29 (Debian's docker-compose) and v2 accept the file as a fresh clone has it, with
    no .env yet (the passwords' absence is refused by Postgres at start, not by the parser)."""
    shutil.copy(COMPOSE_FILE, tmp_path / "compose.yaml")  # a folder with no .env in it
    env = {k: v for k, v in os.environ.items() if not k.startswith("LESSON10_")}
    done = subprocess.run(
        [*compose, "-f", str(tmp_path / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


# Lesson 08's hostile requests to its Docker guard, sent from inside a replica: the way an attacker
# who runs code in the agent's process would reach Docker (tests/lesson_08/test_docker_guard*.py).

# Sent by the replica's own Python to DOCKER_HOST, one request after another; "{last}" in a path is
# the id of the container the last 201 created. Prints each answer's status and the start of it.
SEND = r"""
import base64, http.client, json, os, sys
host = os.environ["DOCKER_HOST"].removeprefix("tcp://")
answers, last = [], ""
for r in json.load(sys.stdin):
    conn = http.client.HTTPConnection(host, timeout=120)
    body = base64.b64decode(r["body"]) if r.get("body") else None
    headers = {**r.get("headers", {}), **({"Content-Type": "application/json"} if body else {})}
    conn.request(r["method"], r["path"].replace("{last}", last), body=body, headers=headers)
    answer = conn.getresponse()
    data = answer.read(65536)
    if answer.status == 201:
        last = json.loads(data)["Id"]
    answers.append({"status": answer.status, "text": data.decode(errors="replace")[:300]})
    conn.close()
print(json.dumps(answers))
"""


def request(method: str, path: str, body: bytes | dict | None = None, **headers) -> dict:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    encoded = base64.b64encode(raw).decode() if raw else None
    return {"method": method, "path": path, "body": encoded, "headers": headers}


def create(body, params: dict) -> str:
    query = "?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else ""
    return f"/v{API}/containers/create{query}"


@pytest.fixture(scope="module")
def from_a_replica(stack):
    """Every hostile request, sent once from agent1 through the guard; the answers by name."""
    plain, plain_params = sandbox_create(owner=OWNER)
    kept, kept_params = kept_sandbox_create(owner=OWNER)
    # Someone else's sandbox, with an expiry an hour ahead: every sweeper on this engine (another
    # suite's, running beside this one) removes a sandbox without one, which this test would read
    # as the guard letting a removal through.
    expires = f"agent-sandbox.expires={int(time.time()) + 3600}"
    owner = "agent-sandbox.owner=someone-else"
    other = docker("create", "--label", owner, "--label", expires, "agent-sandbox:python")
    attach = "/attach?stdin=1&stdout=1&stderr=1&stream=1"
    sent = {
        # Controls: the replicas' own creates pass (and are removed again), so each refusal
        # below is the guard's answer to what the attack changed.
        "plain": request("POST", create(plain, plain_params), plain),
        "plain-removed": request("DELETE", f"/v{API}/containers/{{last}}?force=True"),
        "kept": request("POST", create(kept, kept_params), kept),
        "kept-removed": request("DELETE", f"/v{API}/containers/{{last}}?force=True"),
        **{
            f"{kind}-{attack.name}": request("POST", create(body, params), attack.change(body))
            for kind, (body, params) in {
                "plain": (plain, plain_params),
                "kept": (kept, kept_params),
            }.items()  # fmt: skip
            for attack in ATTACKS
        },
        "start-with-body": request("POST", f"/v{API}/containers/{other}/start", START_BODY),
        **{
            f"other-owner-{name}": request(method, f"/v{API}/containers/{other}{path}", **headers)
            for name, method, path, headers in [
                ("attach", "POST", attach, {"Connection": "Upgrade", "Upgrade": "tcp"}),
                ("start", "POST", "/start", {}),
                ("kill", "POST", "/kill", {}),
                ("remove", "DELETE", "?force=True", {}),
                ("inspect", "GET", "/json", {}),
                ("logs", "GET", "/logs?stdout=1&stderr=1&timestamps=0&follow=0&tail=all", {}),
                ("wait", "POST", "/wait", {}),
            ]
        },
        "other-owner-events": request("GET", exit_watch_events(other)),
        "events-without-an-end": request(
            "GET", f"/v{API}/events?filters=" + '{"event":["die"]}'.replace('"', "%22")
        ),
        "list-every-owner": request("GET", f"/v{API}/containers/json?all=1"),
        "exec": request("POST", f"/v{API}/containers/{other}/exec", {"Cmd": ["id"]}),
        "pull": request("POST", f"/v{API}/images/create?fromImage=alpine"),
        "network": request("POST", f"/v{API}/networks/create", {"Name": "x"}),
        "volume": request("POST", f"/v{API}/volumes/create", {"Name": "x"}),
        "unversioned-create": request("POST", "/containers/create", plain),
    }
    try:
        answers = json.loads(stack.python("agent1", SEND, json.dumps(list(sent.values()))))
        inspected = docker("inspect", "--format", "{{.State.Status}}", other)
    finally:
        docker("rm", "-f", other)
    return dict(zip(sent, answers, strict=True)) | {"other-state": inspected}


def test_the_replicas_reach_docker_only_through_the_guard(stack):
    checks = "import os; print(os.path.exists('/var/run/docker.sock'), os.environ['DOCKER_HOST'])"
    for replica in ("agent1", "agent2"):
        assert stack.python(replica, checks, "").split() == ["False", "tcp://docker-guard:2375"]


def test_the_replicas_own_creates_pass_the_guard(from_a_replica):
    for name in ("plain", "kept"):
        assert from_a_replica[name]["status"] == 201, from_a_replica[name]
        assert from_a_replica[f"{name}-removed"]["status"] == 204, from_a_replica[f"{name}-removed"]


@pytest.mark.parametrize("kind", ["plain", "kept"])
@pytest.mark.parametrize("attack", ATTACKS, ids=lambda attack: attack.name)
def test_every_attackers_sandbox_is_refused_and_none_exists(from_a_replica, kind, attack):
    answer = from_a_replica[f"{kind}-{attack.name}"]
    assert answer["status"] == 403, answer
    assert "refused by the lesson 08 Docker guard" in answer["text"]
    # Neither the run's sandbox nor the kept one exists (the controls removed theirs).
    for label in ("agent-sandbox.request-id=req-1", f"agent-sandbox.request-id={'f' * 32}"):
        assert docker("ps", "-aq", "--filter", f"label={label}", "--filter",
                      f"label=agent-sandbox.owner={OWNER}") == ""  # fmt: skip


@pytest.mark.parametrize(
    "name",
    [
        "start-with-body",
        "other-owner-attach",
        "other-owner-start",
        "other-owner-kill",
        "other-owner-remove",
        "other-owner-inspect",
        "other-owner-logs",
        "other-owner-wait",
        "other-owner-events",
        "events-without-an-end",
        "list-every-owner",
        "exec",
        "pull",
        "network",
        "volume",
        "unversioned-create",
    ],
)
def test_anything_else_through_lesson_10s_guard_is_refused(from_a_replica, name):
    assert from_a_replica[name]["status"] == 403, from_a_replica[name]
    assert from_a_replica["other-state"] == "created"  # nobody started, killed or removed it
