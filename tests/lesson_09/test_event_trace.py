"""Lesson 07 in one trace: the gateway's request, then triage, a specialist and progress, each
delivery a `process <topic>` span joined through the envelope's `traceparent`; a redelivery is a
second delivery span in the same trace, not a new trace. In-process against a real Redis."""

import asyncio
import json

import pytest
import redis
from fastapi.testclient import TestClient
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from lesson07 import contract
from support.lessons import import_lesson


@pytest.fixture(scope="module")
def agents():
    """Loaded when a test asks, not while pytest collects (as tests/lesson_07/conftest.py does)."""
    return import_lesson("lesson07.event_agents", fresh=False)


@pytest.fixture(scope="module")
def gateway():
    """The gateway registers its Prometheus metrics when it is loaded: unregistered after, so that
    another test in this process can load it again."""
    module = import_lesson("code/lesson07/gateway.py")
    yield module
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            REGISTRY.unregister(value)


def settings_for(redis_url: str, **more) -> contract.AgentSettings:
    return contract.AgentSettings(redis_url=redis_url, offline_token_delay_ms=0, **more)


async def deliver_one(agents, settings, service: str, handler=None) -> None:
    """Run `service`'s consumer until it has handled one message (as its loop does)."""
    client = contract.connect(settings)
    bus = agents.Bus(client, settings)
    topic, make_handler = agents.SERVICES[service]
    consumer = agents.Consumer(
        bus, topic, service, handler or make_handler(bus, settings), settings
    )
    await bus.ensure_group(topic, service)
    for _ in range(50):  # up to ~5 s: the visibility timeout of a redelivery
        message = await consumer.next_message()
        if message:
            with agents.delivery_span(topic, service, consumer.name, *message):
                await consumer.handle(*message)
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"{service}: no message on {topic}")
    await client.aclose()


def ask(gateway, settings, text: str) -> str:
    settings = contract.GatewaySettings(
        redis_url=settings.redis_url, allowed_hosts="testserver", token_key="k" * 32
    )
    with TestClient(gateway.create_app(settings)) as client:
        token = client.post("/v1/students", json={"student_id": "ada"}).json()["student_token"]
        question = {"student_id": "ada", "text": text}
        answer = client.post(
            "/v1/questions", json=question, headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def test_a_question_is_one_trace_across_the_three_services(spans, fresh_redis, agents, gateway):
    settings = settings_for(fresh_redis.url)
    ask(gateway, settings, "How do I write a Dockerfile for FastAPI?")
    raw = redis.Redis.from_url(fresh_redis.url, decode_responses=True).xrange(contract.LEARNING)
    assert contract.parse(contract.LEARNING, raw[0][1])["traceparent"]
    asyncio.run(deliver_one(agents, settings, "triage"))
    asyncio.run(deliver_one(agents, settings, "concepts"))
    asyncio.run(deliver_one(agents, settings, "progress"))

    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind == SpanKind.SERVER and "questions" in s.name]
    processes = [s for s in finished if s.name.startswith("process ")]
    assert [s.name for s in processes] == [
        "process learning.requests",
        "process concept.requests",
        "process progress.requests",
    ]
    assert {s.context.trace_id for s in processes} == {server.context.trace_id}
    # Each delivery's parent is the span that published its event: a chain, not siblings.
    assert processes[0].parent.span_id == server.context.span_id
    assert processes[1].parent.span_id == processes[0].context.span_id
    assert processes[2].parent.span_id == processes[1].context.span_id
    for span in processes:
        assert span.kind == SpanKind.CONSUMER
        assert span.attributes["messaging.system"] == "redis"
        assert span.attributes["lesson07.delivery"] == 1
        assert span.attributes["lesson07.outcome"] == "done"


def test_a_redelivery_is_a_second_delivery_span_in_the_same_trace(
    spans, fresh_redis, agents, gateway
):
    settings = settings_for(fresh_redis.url, visibility_timeout_ms=200)
    ask(gateway, settings, "What is a Redis stream?")
    calls = []

    async def fails_once(event, delivery, consumer):
        calls.append(delivery)
        if delivery == 1:
            raise RuntimeError("the model went away")
        return True

    asyncio.run(deliver_one(agents, settings, "triage", fails_once))
    asyncio.run(deliver_one(agents, settings, "triage", fails_once))  # claimed after the timeout
    assert calls == [1, 2]

    finished = spans.get_finished_spans()
    (server,) = [s for s in finished if s.kind == SpanKind.SERVER and "questions" in s.name]
    first, second = [s for s in finished if s.name == "process learning.requests"]
    assert first.context.trace_id == second.context.trace_id == server.context.trace_id
    assert first.parent.span_id == second.parent.span_id == server.context.span_id
    assert (first.attributes["lesson07.delivery"], second.attributes["lesson07.delivery"]) == (1, 2)
    assert first.status.status_code == StatusCode.ERROR
    assert second.attributes["lesson07.outcome"] == "done"


def test_a_forged_traceparent_is_malformed():
    event = contract.envelope("e" * 32, "/lesson07/gateway", "learning.question.asked", {})
    event["traceparent"] = "00-not-a-trace-context"
    with pytest.raises(contract.Malformed, match="traceparent"):
        contract.parse(contract.LEARNING, {"data": json.dumps(event)})


def test_without_tracing_the_envelope_carries_no_context():
    event = contract.envelope("e" * 32, "/lesson07/gateway", "learning.question.asked", {})
    assert "traceparent" not in event
