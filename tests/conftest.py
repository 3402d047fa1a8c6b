"""Fixtures every lesson's tests share; the helpers themselves live in tests/support/."""

import os

import pytest

from tests.support.ports import free_port
from tests.support.redis import RedisServer
from tests.support.server import ServerProcess, offline_environment


@pytest.fixture(autouse=True)
def fresh_openai_http_clients():
    """langchain-openai keeps one HTTP client per process, bound to the loop that first used it.

    A server has one loop for its whole life; every TestClient starts a new one, so each test
    needs fresh clients.
    """
    from langchain_openai.chat_models import _client_utils

    _client_utils._cached_async_httpx_client.cache_clear()
    _client_utils._cached_sync_httpx_client.cache_clear()


# Modules whose tests run lesson 05's API with worker processes (see below).
LESSON_05_PROCESSES = ("tests.lesson_05.", "tests.lesson_09.test_variations_trace")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """`make test` spreads the tests over several processes (pytest-xdist, --dist loadgroup). The
    tests of a module that share a module-scoped fixture (lesson 07's agents, nginx in front of the
    agent) form a group that one process runs, starting that fixture once. Under xdist the groups
    are handed out first: a long group started last would end the run alone."""
    grouped = []
    for item in items:
        definitions = item._fixtureinfo.name2fixturedefs.values()
        if item.module.__name__.startswith(LESSON_05_PROCESSES):
            # Lesson 05's tests each run the API with its reaper, a fork server and worker
            # processes: run side by side they starve each other's timers, so one process runs them.
            item.add_marker(pytest.mark.xdist_group("tests.lesson_05"))
            grouped.append(item)
        elif any(d[-1].scope in ("module", "class", "package") for d in definitions if d):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
            grouped.append(item)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        first = set(grouped)
        items.sort(key=lambda item: item not in first)  # stable: each group keeps its order
    yield
    if getattr(config.option, "loadgroup", False):
        name_groups_in_node_ids(items)


def name_groups_in_node_ids(items) -> None:
    """xdist schedules a group by the "@group" it appends to each node id, but 3.8 sets
    `item._nodeid`, which pytest 9 no longer reads (the id is `item._id`): do it where it failed."""
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(mark.args[0]) for mark in item.iter_markers("xdist_group")})
        if groups and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test (item.rep_setup, rep_call, rep_teardown), so a fixture
    can tell whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def failed(request) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is not None and report.failed


@pytest.fixture
def server_process(request):
    """server_process(args, cwd=..., ready_path=..., **settings) -> a started ServerProcess on a
    free port (HOST and PORT in its environment), stopped after the test; its log printed when the
    test failed."""
    started: list[ServerProcess] = []

    def start(args, *, cwd=None, ready_path="/health", ready_timeout=60.0, **settings):
        port = free_port()
        env = offline_environment(HOST="127.0.0.1", PORT=port, **settings)
        server = ServerProcess(
            args, cwd=cwd, env=env, port=port, ready_path=ready_path, ready_timeout=ready_timeout
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()
        if failed(request):
            print(f"--- log of {' '.join(server.args)} ({server.url}) ---\n{server.tail()}")


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the whole run; `fresh_redis` below resets it for each test."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def fresh_redis(redis_server):
    """The session's Redis, running (a test before may have stopped or frozen it) and empty."""
    if redis_server.running():
        redis_server.thaw()
    else:
        redis_server.start()
    assert redis_server.command("FLUSHALL").startswith(b"+OK")
    return redis_server


@pytest.fixture
def redis_url(fresh_redis):
    return fresh_redis.url
