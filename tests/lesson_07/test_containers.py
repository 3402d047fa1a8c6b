"""Lesson 07 in containers (`make pubsub-test`): the Compose project, kills and a Redis restart.

Sixty questions of three kinds while a `concepts` container is killed twice (docker kill: SIGKILL)
and Redis is restarted: every question answered, routed right, counted exactly once; a malformed
event dead-lettered; `make lesson-07-down` leaves no container, network or volume behind.
"""

import json
import os
import time
from collections import Counter

import httpx
import pytest
import redis

from support.event_agents import ComposeProject
from support.lessons import ROOT
from support.waiting import wait_for
from tests.support.doc_session import Terminal, differences, section_steps
from tests.support.docker_cli import NO_COMPOSE_V2, compose_v2, docker
from tests.support.redis import one_try

pytestmark = pytest.mark.container

IMAGE = os.environ.get("LESSON07_IMAGE", "lesson-07-agents")
DOC = ROOT / "docs" / "07-event-driven-agents.md"
KINDS = {
    "concepts": "What is a {topic} network?",
    "debug": "Traceback (most recent call last): {topic} raised KeyError number {i}",
    "exercise": "Give me an exercise on {topic}, number {i}",
}
TOPICS = ("docker", "redis", "python", "fastapi")


@pytest.fixture(scope="module")
def project():
    if not compose_v2():  # the container suite promises it: make pubsub-test installs it
        pytest.fail(NO_COMPOSE_V2)
    project = ComposeProject(
        "lesson-07-test",
        LESSON07_IMAGE=IMAGE,
        VISIBILITY_TIMEOUT_MS="3000",
        OFFLINE_TOKEN_DELAY_MS="20",
    )
    try:
        project.compose("up", "-d", "--wait", "--scale", "concepts=2")
        yield project
    finally:
        project.down()


def test_compose_v1_runs_the_same_file():
    """Debian's docker-compose 1.29 (no --wait): up, one question answered end to end, down -v."""
    project = ComposeProject("lesson-07-v1", ("docker-compose",), LESSON07_IMAGE=IMAGE)
    try:
        project.compose("up", "-d")
        client = httpx.Client(base_url=project.url, timeout=5)

        def ready():
            try:
                return client.get("/ready").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=180, interval=0.5, what="the gateway ready under Compose v1")
        enrolled = client.post("/v1/students", json={"student_id": "v1"})
        client.headers["Authorization"] = f"Bearer {enrolled.json()['student_token']}"
        asked = client.post("/v1/questions", json={"student_id": "v1", "text": "What is AOF?"})
        question = f"/v1/questions/{asked.json()['id']}"
        view = wait_for(
            lambda: (v := client.get(question).json())["status"] == "answered" and v,
            timeout=60,
            interval=0.5,
            what="the answer under Compose v1",
        )
        assert view["route"] == "concepts"
    finally:
        project.compose("down", "-v", "--remove-orphans", check=False)
        project.remove_secrets()
    label = f"label=com.docker.compose.project={project.name}"
    assert docker("ps", "-aq", "--filter", label) == ""
    assert not project.secret_dir.exists()  # it leaked one folder a run in /tmp before


def test_sixty_questions_survive_two_kills_and_a_redis_restart(project, capsys):
    client = httpx.Client(base_url=project.url, timeout=10)
    sent: dict[str, tuple[str, str]] = {}  # question id -> (student, kind)
    tokens: dict[str, dict] = {}  # student -> the Authorization header of the student's token
    for i in range(5):
        enrolled = client.post("/v1/students", json={"student_id": f"student-{i}"})
        assert enrolled.status_code == 201, enrolled.text
        tokens[f"student-{i}"] = {"Authorization": f"Bearer {enrolled.json()['student_token']}"}

    def send(batch: int) -> None:
        for i in range(20):
            kind = list(KINDS)[i % 3]
            student = f"student-{i % 5}"
            text = KINDS[kind].format(topic=TOPICS[(i + batch) % 4], i=i)
            response = client.post(
                "/v1/questions", json={"student_id": student, "text": text}, headers=tokens[student]
            )
            assert response.status_code == 202, response.text
            sent[response.json()["id"]] = (student, kind)

    def kill_a_concepts_container() -> None:
        time.sleep(1.5)  # both concepts consumers are busy with this batch by now
        victim = project.compose("ps", "-q", "concepts").split()[0]
        docker("kill", victim)
        time.sleep(0.5)
        docker("start", victim)

    send(0)
    kill_a_concepts_container()
    send(1)
    kill_a_concepts_container()
    send(2)
    time.sleep(1)
    redis_container = project.compose("ps", "-q", "redis").strip()
    docker("restart", redis_container, timeout=120)

    def views():
        found = {}
        for question_id, (student, _) in sent.items():
            response = client.get(f"/v1/questions/{question_id}", headers=tokens[student])
            if response.status_code != 200 or response.json()["status"] == "pending":
                return None
            found[question_id] = response.json()
        return found

    answered = wait_for(views, timeout=150, interval=1, what="all 60 questions answered")
    assert all(v["status"] == "answered" for v in answered.values()), answered
    assert all(answered[q]["route"] == kind for q, (_, kind) in sent.items())

    expected = Counter(student for student, _ in sent.values())
    counted = {
        s: client.get(f"/v1/students/{s}/progress", headers=tokens[s]).json() for s in expected
    }
    for student, progress in counted.items():
        kinds = Counter(kind for s, kind in sent.values() if s == student)
        assert progress["questions"] == expected[student], (student, progress)
        assert progress["kinds"] == dict(kinds), (student, progress)

    # A malformed event, published straight onto the topic as a broken producer would.
    project.redis_cli("XADD", "learning.requests", "*", "data", "not a cloud event")
    dead = wait_for(
        lambda: project.redis_cli("XLEN", "learning.requests.deadletter").strip() not in ("", "0"),
        what="the malformed event dead-lettered",
    )
    assert dead
    assert project.redis_cli("CONFIG", "GET", "appendonly").split()[-1] == "yes"

    trace = project.redis_cli("--no-raw", "XRANGE", "trace", "-", "+")
    redelivered = sum(int(v["attempts"]) - 1 for v in answered.values())
    dead_lettered = sum(
        int(project.redis_cli("XLEN", f"{t}.deadletter").strip() or 0)
        for t in (
            "learning.requests",
            "concept.requests",
            "debug.requests",
            "exercise.requests",
            "progress.requests",
        )
    )
    twice = sum(max(0, counted[s]["questions"] - expected[s]) for s in expected)
    figures = {
        "sent": len(sent),
        "answered": len(answered),
        "redelivered": redelivered,
        "dead_lettered": dead_lettered,
        "counted_twice": twice,
        "trace_entries": trace.count("outcome"),
    }
    with capsys.disabled():  # shown in `make pubsub-test`'s output, not only on failure
        print("\nchaos figures:", json.dumps(figures))
    assert redelivered >= 1, "no kill landed on a message in flight"
    assert twice == 0 and dead_lettered == 1


def test_redis_answers_nobody_without_the_password(project):
    """From the host, at the container's own address: NOAUTH, where PONG was."""
    container = project.compose("ps", "-q", "redis").strip()
    address = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container
    ).strip()
    client = redis.Redis(host=address, port=6379, socket_timeout=5, retry=one_try())
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    forged = '{"specversion": "1.0", "id": "x", "type": "totally.bogus", "source": "/evil"}'
    with pytest.raises(redis.AuthenticationError):
        client.xadd("learning.requests", {"data": forged})
    assert project.redis_cli("CONFIG", "GET", "maxmemory-policy").split()[-1] == "noeviction"


WAIT_FOR_SIX = """for _ in $(seq 120); do
  curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8070/v1/students/bob/progress \\
    | grep -q '"questions":6' && break
  sleep 1
done"""


def test_step_5_as_the_doc_types_it(project):
    """docs/07's section 5 typed into one bash against this module's project (its name and port
    for lesson07 and 8070): `make lesson-07` brings it up as it is, the scale to three, the six
    questions as bob. The doc's `sleep 10` becomes a wait until the six are counted, as a person
    would wait on a slower machine; what each block prints is compared with the doc."""
    steps = section_steps(DOC, "5.")
    firsts = [command.body.split(" ")[:3] for command, _ in steps]
    assert firsts == [
        ["make", "lesson-07"],
        ["docker", "compose", "-p"],
        ["ENROLLED=$(curl", "-s", "-X"],
    ]
    assert all(shown is not None for _, shown in steps)

    def here(text: str) -> str:  # the doc's project name and port, as this project's
        for name in ("-p lesson07 ", "project lesson07)", "lesson07-concepts-"):
            text = text.replace(name, name.replace("lesson07", project.name))
        return text.replace("8070", str(project.port))

    # As a fresh `make lesson-07` leaves it: one concepts container (Compose numbers the copies a
    # scale adds after those it has).
    project.compose("up", "-d", "--wait", "--scale", "concepts=1")
    terminal = Terminal(ROOT, {**project.env, "LESSON07_PROJECT": project.name})
    try:
        for command, shown in steps:
            body = here(command.body).replace("sleep 10", here(WAIT_FOR_SIX))
            printed, status = terminal.run(body, timeout=600)
            assert status == 0, f"docs/07:{command.line} exited {status}:\n{printed}"
            problems = differences(here(shown.body), printed)
            assert not problems, f"docs/07:{command.line}\n{problems}"
    finally:
        terminal.close()


# Run inside the exercise container, with what that container is given: its Redis password (the
# mounted secret) and its user name. Each attempt: what Redis answered, or its error.
ATTACK = """
import hashlib, json, os, redis
secret = open("/run/secrets/redis_password").read().strip()
r = redis.Redis(host="redis", username=os.environ.get("REDIS_USERNAME"), password=secret,
                decode_responses=True, socket_timeout=10)
tried = {}
def attempt(name, *command):
    try:
        tried[name] = repr(r.execute_command(*command))
    except redis.RedisError as exc:
        tried[name] = type(exc).__name__
attempt("whoami", "ACL", "WHOAMI")
attempt("take over alice", "SET", "student:alice", hashlib.sha256(b"T" * 32).hexdigest())
attempt("ask as the gateway", "XADD", "learning.requests", "*", "data", "{}")
attempt("route as triage", "XADD", "concept.requests", "*", "data", "{}")
attempt("flushall", "FLUSHALL")
attempt("config set", "CONFIG", "SET", "requirepass", "x")
attempt("config get", "CONFIG", "GET", "maxmemory")
attempt("keys", "KEYS", "*")
print(json.dumps(tried))
"""


def test_code_inside_an_agents_container_can_do_its_work_and_nothing_else(project):
    """The attacker of issue 61 item 2: code running in the exercise container, with the password
    that container is given. Before, it was Redis's `default` user: every command, every key
    (`SET student:alice` took alice's account, FLUSHALL, CONFIG SET requirepass)."""
    tried = json.loads(project.compose("exec", "-T", "exercise", "python", "-c", ATTACK))
    assert tried.pop("whoami") == "'exercise'", tried
    assert tried == dict.fromkeys(tried, "NoPermissionError"), tried
    assert project.redis_cli("EXISTS", "student:alice").strip() == "0"


def privileges(status: str) -> dict[str, int]:
    """What a /proc/PID/status says of a process's privileges: its user, its bounding and
    effective capability sets, and whether it may gain any (NoNewPrivs 0) through a setuid
    program."""
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "Uid": int(fields["Uid"].split()[0]),
        "CapBnd": int(fields["CapBnd"], 16),
        "CapEff": int(fields["CapEff"], 16),
        "NoNewPrivs": int(fields["NoNewPrivs"]),
    }


def test_code_inside_redis_is_not_root_has_no_capabilities_and_cannot_write_its_root(project):
    """Where an attacker stands who reached Redis's process (a bug in its Lua engine, through
    EVAL): Redis itself, PID 1 of its container. Before, with `sh -c` as the command, the
    official image kept it root with Docker's default capabilities."""
    found = privileges(project.compose("exec", "-T", "redis", "cat", "/proc/1/status"))
    assert found["Uid"] != 0 and found["CapEff"] == 0 and found["NoNewPrivs"] == 1, found
    write = "touch /usr/local/bin/x 2>/dev/null || touch /etc/x 2>/dev/null; echo $?"
    assert project.compose("exec", "-T", "redis", "sh", "-c", write).strip() == "1"


def test_no_agent_holds_a_capability_or_can_gain_one(project):
    """Where code stands that took an agent over (through the model or a library): the agent's
    process, PID 1 of its container. Before, Docker's default bounding set (CHOWN, SETUID,
    NET_RAW...), and a setuid program could raise it (NoNewPrivs 0)."""
    for service in ("gateway", "triage", "concepts", "debug", "exercise", "progress"):
        status = project.compose("exec", "-T", service, "cat", "/proc/1/status")
        expected = {"Uid": 10001, "CapBnd": 0, "CapEff": 0, "NoNewPrivs": 1}
        assert privileges(status) == expected, (service, status)


def test_lesson_07_down_leaves_nothing(project):
    project.down()
    label = f"label=com.docker.compose.project={project.name}"
    assert docker("ps", "-aq", "--filter", label) == ""
    assert docker("network", "ls", "-q", "--filter", label) == ""
    assert docker("volume", "ls", "-q", "--filter", label) == ""
