"""An agent that cannot reach Redis waits longer between attempts, with redis-py's own
ExponentialBackoff (the one the gateway's client retries with), not a copy of its own."""

import asyncio

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

from lesson07 import contract
from support.ports import free_port


def test_a_consumer_without_redis_waits_0_5_1_2_4_8_then_10_s_with_redis_pys_backoff(
    agents, monkeypatch, tmp_path
):
    assert not hasattr(contract, "Backoff"), "a backoff class of lesson 07's own"
    settings = contract.AgentSettings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        heartbeat_file=str(tmp_path / "heartbeat"),
    )
    client = contract.connect(settings, retry=Retry(NoBackoff(), 0))  # the consumer's waits only
    bus = agents.Bus(client, settings)
    consumer = agents.Consumer(bus, contract.LEARNING, "triage", None, settings)
    waits, real_sleep = [], asyncio.sleep

    async def sleep(delay, *args, **kwargs):
        waits.append(delay)
        consumer.stopping = len(waits) == 7
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    asyncio.run(consumer.run())
    assert waits == [ExponentialBackoff(cap=10, base=0.5).compute(n) for n in range(7)]
    assert waits == [0.5, 1, 2, 4, 8, 10, 10]
