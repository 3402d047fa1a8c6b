"""Lesson 07 as processes: routing, a consumer killed mid-message, duplicates, dead letters."""

import json
import signal
import uuid

import pytest

from support.event_agents import answered, ask, enrol, envelope, progress, student, view
from support.waiting import wait_for
from tests.support.errors import assert_error
from tests.support.metrics import metric


def wait_until_delivered(system, question_id: str, what: str) -> None:
    """Until the trace shows the routed question handed to a specialist consumer."""
    wait_for(
        lambda: any(
            t["event_id"] == f"{question_id}.routed" and t["outcome"] == "delivered"
            for t in system.trace()
        ),
        timeout=20,
        what=what,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is a Docker volume?", "concepts"),
        ("Traceback (most recent call last):\n  File 'a.py'\nKeyError: 'x'", "debug"),
        ("My redis client raises ConnectionError", "debug"),
        ("Give me an exercise on Kubernetes", "exercise"),
    ],
)
def test_triage_routes_each_kind_of_question_to_its_specialist(system, text, expected):
    """202 with an id at once, then answered by the right specialist, counted once by progress."""
    who = student()
    question_id = ask(system, who, text)
    view = answered(system, question_id)
    assert view["status"] == "answered" and view["route"] == expected, view
    assert view["attempts"] == 1 and "[offline model]" in view["answer"]
    counts = wait_for(
        lambda: (p := progress(system, who))["questions"] == 1 and p,
        what="progress counted the question",
    )
    assert counts["kinds"] == {expected: 1}


def test_a_consumer_killed_mid_message_leaves_it_to_a_live_one(system):
    """SIGKILL while the model answers: nothing was acked, so another consumer claims it."""
    for process in system.processes["concepts"]:
        system.stop(process)
    slow = system.start("concepts", OFFLINE_TOKEN_DELAY_MS="300")  # ~10 s per answer
    who = student()
    question_id = ask(system, who, "What is a container image?")
    wait_until_delivered(system, question_id, "the slow consumer got it")
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    system.start("concepts")
    view = answered(system, question_id, timeout=40)
    assert view["status"] == "answered" and view["attempts"] == 2, view
    deliveries = [
        t
        for t in system.trace()
        if t["event_id"] == f"{question_id}.routed" and t["outcome"] == "delivered"
    ]
    assert [d["delivery"] for d in deliveries] == ["1", "2"]
    assert deliveries[0]["consumer"] != deliveries[1]["consumer"]
    assert wait_for(lambda: progress(system, who)["questions"] == 1, what="counted once")


def test_a_message_delivered_twice_changes_the_progress_counts_once(agents, system):
    """The same event twice on progress.requests (what a redelivery looks like): one count."""
    who, question_id = student(), uuid.uuid4().hex
    enrol(system, who)
    asked = {"student_id": who, "route": "concepts", "topic": "docker"}  # gateway's and triage's
    system.redis.hset(agents.asked_key(question_id), mapping=asked)
    event = envelope(
        f"{question_id}.answered",
        {
            "question_id": question_id,
            "student_id": who,
            "text": "x",
            "route": "concepts",
            "topic": "docker",
        },
    )
    system.publish_raw(agents.PROGRESS, event)
    system.publish_raw(agents.PROGRESS, event)

    def outcomes():
        found = [
            t["outcome"]
            for t in system.trace()
            if t["event_id"] == f"{question_id}.answered" and t["outcome"] != "delivered"
        ]
        return found if len(found) == 2 else None

    assert sorted(wait_for(outcomes, what="both deliveries handled")) == ["done", "duplicate"]
    assert progress(system, who)["questions"] == 1
    assert progress(system, who)["topics"] == {"docker": 1}


def test_a_question_published_twice_is_answered_and_counted_once(agents, system):
    """A producer that retries its publish: triage routes the event id once, nothing doubles."""
    who, question_id = student(), uuid.uuid4().hex
    enrol(system, who)
    system.students[question_id] = who
    record = {"status": "pending", "student_id": who}
    system.redis.hset(agents.question_key(question_id), mapping=record)
    system.redis.hset(agents.asked_key(question_id), "student_id", who)  # the gateway's record
    data = {"question_id": question_id, "student_id": who, "text": "What is FastAPI?"}
    event = envelope(question_id, data, topic=agents.LEARNING)
    system.publish_raw(agents.LEARNING, event)
    system.publish_raw(agents.LEARNING, event)
    assert answered(system, question_id)["route"] == "concepts"
    wait_for(
        lambda: (
            sum(
                t["event_id"] == question_id and t["outcome"] == "duplicate" for t in system.trace()
            )
            == 1
        ),
        what="the second copy seen as duplicate",
    )
    assert wait_for(lambda: progress(system, who)["questions"] == 1, what="counted")
    routed = [
        e
        for _, e in system.redis.xrange(agents.SPECIALIST_TOPICS["concepts"])
        if json.loads(e["data"])["id"] == f"{question_id}.routed"
    ]
    assert len(routed) == 1


@pytest.mark.parametrize(
    ("topic", "data", "reason"),
    [
        ("learning.requests", "not json {", "not a JSON CloudEvent"),
        ("learning.requests", json.dumps({"specversion": "0.3", "id": "x"}), "not a CloudEvents"),
        (
            "concept.requests",
            envelope("bad-1", {"question_id": "nope"}, topic="concept.requests"),
            "question_id",
        ),
    ],
)
def test_a_malformed_event_goes_to_the_dead_letter_topic_and_is_acked(
    agents, system, topic, data, reason
):
    before = system.redis.xlen(agents.deadletter(topic))
    system.publish_raw(topic, data)
    dead = wait_for(
        lambda: system.redis.xrange(agents.deadletter(topic))[before:], what="a dead letter"
    )
    assert reason in dead[0][1]["reason"] and dead[0][1]["data"] == data
    group = {"learning.requests": "triage", "concept.requests": "concepts"}[topic]
    assert system.redis.xpending(topic, group)["pending"] == 0


def test_a_message_that_keeps_failing_is_dead_lettered_after_max_deliveries(agents, system):
    """A specialist whose model is unreachable: retried MAX_DELIVERIES (3) times, then dead."""
    for process in system.processes["exercise"]:
        system.stop(process)
    broken = system.start(
        "exercise",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL="http://127.0.0.1:9",
        OPENAI_MAX_RETRIES="0",
        VISIBILITY_TIMEOUT_MS="300",
    )
    who = student()
    question_id = ask(system, who, "Give me an exercise on Redis")
    view = answered(system, question_id, timeout=60)
    assert view["status"] == "failed" and "MAX_DELIVERIES" in view["error"], view
    dead = system.redis.xrange(agents.deadletter("exercise.requests"))
    assert json.loads(dead[-1][1]["data"])["id"] == f"{question_id}.routed"
    assert dead[-1][1]["deliveries"] == "4"
    assert progress(system, who)["questions"] == 0
    system.stop(broken)
    system.start("exercise")


def test_three_debug_requests_on_one_topic_publish_a_struggle_alert(agents, system):
    who = student()
    for i in range(3):
        question_id = ask(system, who, f"Docker build fails with error {i}: no space left")
        assert answered(system, question_id)["route"] == "debug"
    state = wait_for(
        lambda: (p := progress(system, who))["questions"] == 3 and p, what="three counted"
    )
    assert state["struggles"] == {"docker": 3} and state["alerts"] == ["docker"]
    alerts = [json.loads(e["data"]) for _, e in system.redis.xrange(agents.ALERTS)]
    mine = [a for a in alerts if a["data"]["student_id"] == who]
    assert len(mine) == 1 and mine[0]["data"]["topic"] == "docker"
    assert mine[0]["type"] == "learning.student.struggling" and mine[0]["specversion"] == "1.0"


def test_the_gateway_answers_bad_input_in_the_error_shape(system):
    response = system.gateway.post("/v1/questions", json={"student_id": "a b", "text": ""})
    error = assert_error(response, 422, "validation_error")
    assert {tuple(d["loc"]) for d in error["details"]} == {("body", "student_id"), ("body", "text")}
    assert_error(system.gateway.get(f"/v1/questions/{uuid.uuid4().hex}"), 404, "not_found")
    assert_error(system.gateway.get("/v1/questions/../../etc"), 404, "not_found")
    assert_error(system.gateway.get("/v1/questions/XYZ"), 422, "validation_error")
    extra = system.gateway.post("/v1/questions", json={"student_id": "a", "text": "b", "x": 1})
    assert_error(extra, 422, "validation_error")


def test_metrics_show_each_groups_backlog_and_dead_letters(agents, system):
    """Dead letters counted per topic; a message published with no consumer free shows as unread."""
    dead = system.redis.xlen(agents.deadletter(agents.LEARNING))
    assert metric(system.gateway, "topic_deadletter_messages", topic=agents.LEARNING) == dead
    for process in system.processes["debug"]:
        system.stop(process)
    ask(system, student(), "My python script raises KeyError")
    wait_for(
        lambda: (
            metric(system.gateway, "topic_unread_messages", topic="debug.requests", group="debug")
            == 1
        ),
        what="one unread debug request",
    )
    assert metric(system.gateway, "questions_accepted_total") >= 1
    system.start("debug")
    wait_for(
        lambda: (
            metric(system.gateway, "topic_unread_messages", topic="debug.requests", group="debug")
            == 0
        ),
        what="the debug request read once debug is back",
    )


def test_sigterm_lets_a_consumer_finish_the_message_in_hand(system):
    """docker stop mid-message: the answer is stored and acked once, then the process exits 0."""
    for process in system.processes["concepts"]:
        system.stop(process)
    slow = system.start("concepts", OFFLINE_TOKEN_DELAY_MS="100")  # ~3.5 s per answer
    question_id = ask(system, student(), "What is a Redis stream?")
    wait_until_delivered(system, question_id, "the consumer got it")
    slow.send_signal(signal.SIGTERM)
    assert slow.wait(15) == 0
    found = view(system, question_id).json()
    assert found["status"] == "answered" and found["attempts"] == 1, found
    system.start("concepts")


@pytest.mark.parametrize(
    "body",
    [
        {"student_id": "ann:progress:bob", "text": "hi"},  # another key's name
        {"student_id": "a*", "text": "hi"},
        {"student_id": "x" * 65, "text": "hi"},
        {"student_id": "ann", "text": "x" * 4001},
        {"student_id": ["ann"], "text": "hi"},
    ],
)
def test_hostile_questions_are_refused_before_anything_is_published(agents, system, body):
    before = system.redis.xlen(agents.LEARNING)
    assert_error(system.gateway.post("/v1/questions", json=body), 422, "validation_error")
    assert system.redis.xlen(agents.LEARNING) == before


def test_a_student_id_cannot_name_another_key(system):
    response = system.gateway.get("/v1/students/ann:topic:x/progress")
    assert_error(response, 422, "validation_error")


def test_a_dead_letter_fails_only_a_pending_question_the_gateway_recorded(agents, system):
    """A bad progress event cannot unanswer a question; a forged question id creates no record."""
    who = student()
    question_id = ask(system, who, "What is an image tag?")
    assert answered(system, question_id)["status"] == "answered"
    forged = uuid.uuid4().hex
    before = system.redis.xlen(agents.deadletter(agents.PROGRESS))
    bad = {"question_id": question_id, "student_id": who, "text": "x"}  # no route, no topic
    system.publish_raw(agents.PROGRESS, envelope(f"{question_id}.bad", bad))
    system.publish_raw(agents.PROGRESS, envelope(f"{forged}.bad", {**bad, "question_id": forged}))
    wait_for(
        lambda: system.redis.xlen(agents.deadletter(agents.PROGRESS)) == before + 2,
        what="both dead-lettered",
    )
    assert view(system, question_id).json()["status"] == "answered"
    assert not system.redis.exists(agents.question_key(forged))
