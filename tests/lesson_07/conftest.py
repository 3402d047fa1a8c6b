"""Lesson 07 without Docker: each agent and the gateway run as local processes, the same commands
the containers run (`python -m lesson07.event_agents triage`, ...), against a real redis-server.

The container suite (marker `container`, `make pubsub-test`) runs the Compose project instead.
"""

import uuid

import httpx
import pytest

from support.event_agents import SERVICES, System, gateway_process
from support.lessons import import_lesson
from tests.support.redis import RedisServer


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """One Redis, the five agents and the gateway for the module; each test has its own students."""
    logs = tmp_path_factory.mktemp("lesson07-logs")
    # Redis with a password, as in Compose: every agent and the gateway must send it.
    with RedisServer(password=uuid.uuid4().hex) as server:
        system = System(server.url, logs, server.password)
        try:
            for service in SERVICES:
                system.start(service)
            with gateway_process(system.base_env, logs) as gateway:
                system.gateway = httpx.Client(base_url=gateway.url, timeout=10)
                yield system
                system.gateway.close()
        finally:
            system.close()


@pytest.fixture(scope="session")
def agents():
    """Lesson 07's agents file, loaded when a test asks for it, not while pytest collects: a
    lesson that fails to import fails its tests, not the collection of every other."""
    return import_lesson("code/lesson07/event_agents.py")
