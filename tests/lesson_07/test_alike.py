"""Lesson 07's last step and the production agents answer alike.

Step 4 (code/lesson07/step4_deadletters.py) is a small copy of the production agents
(code/lesson07/event_agents.py and code/lesson07/). Both get what docs/07 sends through the steps,
on a real Redis: step 1's three questions as the student `ann`, step 3's copy of the first
question's event, step 4's event that is not a CloudEvent, and step 4's exercise specialist whose
model server is down; the production agents with the step's visibility timeout and delivery limit.
Each side's agents run until every group has read and acked all its topic holds; then the same
things must be in Redis: each question's route, status and answer, the progress counts, how many
events each specialist was handed (the copy: none), and the dead letters (what each holds, and after
how many deliveries)."""

import asyncio
import json
import re
import uuid

import pytest
import redis
from langchain_openai import ChatOpenAI

from lesson07 import contract
from support.lessons import import_lesson

LAST_STEP = "code/lesson07/step4_deadletters.py"
NOT_A_CLOUD_EVENT = "not a cloud event"


def model_server_down() -> ChatOpenAI:
    """Step 4's exercise model: nothing listens on port 9, every call fails at once."""
    return ChatOpenAI(base_url="http://127.0.0.1:9/v1", api_key="none", max_retries=0)


async def settled(r, topics: list[str]) -> None:
    """Until each group has read (lag) and acked (pending) all its topic holds: a minute at most."""
    for _ in range(600):
        groups = [
            g for topic in topics if await r.exists(topic) for g in await r.xinfo_groups(topic)
        ]
        if len(groups) == len(topics) and not any(g["lag"] or g["pending"] for g in groups):
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"not settled: {groups}")


async def the_docs_events(r, ask, questions: list[str]) -> None:
    """What docs/07 sends: the questions, the first one's event again, and a broken event."""
    for text in questions:
        await ask(text)
    [(_, first)] = await r.xrange(contract.LEARNING, count=1)
    await r.xadd(contract.LEARNING, first)
    await r.xadd(contract.LEARNING, {"data": NOT_A_CLOUD_EVENT})


async def run_the_step(step) -> None:
    await step.r.flushdb()
    step.AGENTS[step.KINDS["exercise"]] = (
        "exercise",
        step.specialist("exercise", model_server_down()),
    )
    agents = [asyncio.create_task(step.consume(t, *agent)) for t, agent in step.AGENTS.items()]
    await the_docs_events(step.r, step.ask, step.QUESTIONS)
    await settled(step.r, list(step.AGENTS))
    for agent in agents:
        agent.cancel()
    await step.r.aclose()


async def run_production(agents, settings, questions: list[str], exercise) -> None:
    client = contract.connect(settings)
    await client.flushdb()
    bus = agents.Bus(client, settings)
    consumers = []
    for service, (topic, make_handler) in agents.SERVICES.items():
        handler = exercise(bus) if service == "exercise" else make_handler(bus, settings)
        consumers.append(agents.Consumer(bus, topic, service, handler, settings))
    running = [asyncio.create_task(consumer.run()) for consumer in consumers]

    async def ask(text: str) -> None:  # what the gateway publishes, and its record
        qid = uuid.uuid4().hex
        data = {"question_id": qid, "student_id": "ann", "text": text}
        event = contract.envelope(qid, "/lesson07/gateway", "learning.question.asked", data)
        record = {"student_id": "ann", "status": "pending", "attempts": 0}
        await client.hset(contract.question_key(qid), mapping=record)
        await client.hset(contract.asked_key(qid), "student_id", "ann")  # the gateway's own
        await bus.publish(contract.LEARNING, event)

    await the_docs_events(client, ask, questions)
    await settled(client, [consumer.topic for consumer in consumers])
    for consumer in consumers:
        consumer.stopping = True
    await asyncio.wait_for(asyncio.gather(*running), 30)
    await client.aclose()


def what_redis_holds(url: str, topics: list[str]) -> dict:
    """What both must agree on, read the same way from either side's Redis."""
    r = redis.Redis.from_url(url, decode_responses=True)
    asked = {}
    for _, fields in r.xrange(contract.LEARNING):
        if fields["data"] != NOT_A_CLOUD_EVENT:
            question = json.loads(fields["data"])["data"]
            asked.setdefault(question["text"], question["question_id"])
    progress = r.hgetall("progress:ann")

    def letter(fields: dict) -> tuple:
        try:
            event = json.loads(fields["data"])
            held = (event["type"], event["data"]["text"])
        except ValueError:
            held = fields["data"]
        return held, re.search(r"delivered (\d+) times", fields["reason"])

    return {
        "questions": {
            t: r.hmget(contract.question_key(q), "route", "status", "answer")
            for t, q in asked.items()
        },  # fmt: skip
        "progress": {
            k: v for k, v in progress.items() if k == "questions" or k.startswith("kind:")
        },
        "handed to each specialist": {t: r.xlen(t) for t in contract.SPECIALIST_TOPICS.values()},
        "dead letters": {
            topic: [
                (held, found and found[1])
                for held, found in (letter(f) for _, f in r.xrange(contract.deadletter(topic)))
            ]
            for topic in topics
        },
    }


@pytest.fixture
def step(monkeypatch, fresh_redis):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("REDIS_URL", fresh_redis.url)
    return import_lesson(LAST_STEP)  # a fresh module: its Redis client on this test's Redis


def test_the_last_step_and_the_production_agents_answer_the_docs_questions_alike(
    step, agents, fresh_redis, monkeypatch, tmp_path
):
    topics = list(step.AGENTS)
    asyncio.run(run_the_step(step))
    by_the_step = what_redis_holds(fresh_redis.url, topics)

    settings = contract.AgentSettings(
        redis_url=fresh_redis.url,
        visibility_timeout_ms=step.VISIBILITY_TIMEOUT_MS,
        max_deliveries=step.MAX_DELIVERIES,
        heartbeat_file=str(tmp_path / "heartbeat"),
    )

    def exercise(bus):  # the production specialist, its model server down as in step 4
        with monkeypatch.context() as patched:
            patched.setattr(agents, "make_chat_model", lambda *_, **__: model_server_down())
            return agents.make_specialist("exercise", bus, settings)

    asyncio.run(run_production(agents, settings, step.QUESTIONS, exercise))
    by_production = what_redis_holds(fresh_redis.url, topics)

    differ = {
        part: {"step 4": by_the_step[part], "production": by_production[part]}
        for part in by_the_step
        if by_the_step[part] != by_production[part]
    }
    assert not differ, "they answer differently:\n" + json.dumps(differ, indent=1)
    # And what docs/07 says they hold: nothing counted twice, the failed question dead-lettered.
    assert by_the_step["progress"] == {"questions": "2", "kind:concepts": "1", "kind:debug": "1"}
    assert by_the_step["handed to each specialist"] == dict.fromkeys(
        contract.SPECIALIST_TOPICS.values(), 1
    )
    letters = by_the_step["dead letters"]
    assert letters["learning.requests"] == [(NOT_A_CLOUD_EVENT, None)]
    routed = ("learning.question.routed", "Give me an exercise on Kubernetes")
    assert letters["exercise.requests"] == [(routed, str(step.MAX_DELIVERIES + 1))]
