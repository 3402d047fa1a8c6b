"""Fixtures every lesson's tests share; the helpers themselves live in tests/support/."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid

import httpx
import pytest

from support.lessons import ROOT, import_lesson
from support.ports import free_port
from support.postgres import PostgresServer
from support.server import ServerProcess, offline_environment
from tests.support import variations
from tests.support.docker_cli import docker
from tests.support.redis import RedisServer
from tests.support.variation_workers import LiveServer, ProcessWorkers, start_forkserver


def pytest_configure(config):
    """Ctrl+C as a learner's terminal has it. A shell starts a background command (`make test &`)
    with SIGINT ignored, and every process a test then starts inherits that: a server the test
    interrupts would shrug Ctrl+C off, as no learner's does. Python's own handler again, so what the
    tests start gets SIGINT's default."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def fresh_openai_http_clients():
    """langchain-openai keeps one HTTP client per process, bound to the loop that first used it.

    A server has one loop for its whole life; every TestClient starts a new one, so each test
    needs fresh clients.
    """
    from langchain_openai.chat_models import _client_utils

    _client_utils._cached_async_httpx_client.cache_clear()
    _client_utils._cached_sync_httpx_client.cache_clear()


# The suites whose `engine` fixture starts run_python's sandboxes on the local engine.
SANDBOX_SUITES = ("tests.lesson_10.", "tests.lesson_12.")

# Modules whose tests run lesson 05's API with worker processes (see below).
LESSON_05_PROCESSES = ("tests.lesson_05.", "tests.lesson_09.test_variations_trace")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` spreads the tests over several processes (pytest-xdist, --dist loadgroup). The
    tests of a module that share a module-scoped fixture (lesson 07's agents, nginx in front of the
    agent) form a group that one process runs, starting that fixture once. Under xdist the groups
    are handed out first: a long group started last would end the run alone."""
    grouped = []
    for item in items:
        if "engine" in item.fixturenames and item.module.__name__.startswith(SANDBOX_SUITES):
            # Lessons 10 and 12 with run_python in real sandboxes (python:3.11-slim, which `make
            # durable-test` and `make a2a-test` make available first): their lessons' own checks.
            item.add_marker(pytest.mark.container)
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


# The checks `make test` leaves to each lesson's own target (marker `container`), by folder.
CONTAINER_CHECKS = (
    "make smoke, compose-test, sandbox-test, variations-test, swarm-test, "
    "pubsub-test, mcp-test, traces-test, durable-test, evals-test, a2a-test (`make help`)"
)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    """The run's last words say what it did not check and the command that checks it: the skips,
    counted by reason (each reason names its command), and the lessons' container checks left
    out of `make test`."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = re.sub(r"^Skipped: ", "", reason)
        counts[reason] = counts.get(reason, 0) + 1
    # `make test` leaves out the tests marked `container` (-m 'not container'); each lesson's own
    # check runs its share. Under xdist the workers deselect them, so no count is said here.
    left_out = terminalreporter.config.option.markexpr == "not container"
    if not counts and not left_out:
        return
    terminalreporter.section("what this run did not check, and the command that does")
    for reason, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        terminalreporter.line(f"{count:5} skipped: {reason}")
    if left_out:
        terminalreporter.line(f"the lessons' own checks (marker `container`): {CONTAINER_CHECKS}")


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


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL for the whole run (per xdist process); each test takes a database of its
    own from it (`postgres_dsn` below)."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server):
    """The DSN of a new, empty database on the session's PostgreSQL (running: a test before may have
    stopped or killed it), dropped after the test."""
    if not postgres_server.running():
        postgres_server.kill()  # what a killed server may have left
        postgres_server.start()
    dsn = postgres_server.create_database()
    yield dsn
    if postgres_server.running():
        postgres_server.drop_database(dsn.rsplit("/", 1)[1])


# --- Lesson 05's API, for its own tests and lesson 09's. `make test` runs it against a real
# redis-server with each variation a local process (ProcessWorkers, tests/support/); the container
# suite (marker `container`) runs it as `make lesson-05` does, with real worker containers.


@pytest.fixture
def workers():
    start_forkserver()
    pool = ProcessWorkers()
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def api():
    """Lesson 05's API file, loaded when a test asks for it, not while pytest collects, under one
    name, so that its classes are the same everywhere."""
    return import_lesson("lesson05.variations_api", fresh=False)


@pytest.fixture
def serve(api, redis_url, workers):
    """serve(**settings) -> a LiveServer running the lesson's app with process workers."""
    started = []

    def start(**overrides) -> LiveServer:
        values = {"REDIS_URL": redis_url, "WORKER_REDIS_URL": redis_url, **overrides}
        values = {"OFFLINE_TOKEN_DELAY_MS": 0, "REAP_INTERVAL_SECONDS": 0.1, **values}
        settings = api.Settings(**values)
        server = LiveServer(api.create_app(settings, workers=workers))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# The container suite: the lesson's own script starts Redis and the network, the API runs as a
# process of its own, workers are containers. Everything is named after one random NAME.


@pytest.fixture(scope="module")
def stack():
    """`scripts/lesson-05.sh up` under a name of its own; `down` afterwards removes everything."""
    name = f"l05t-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NAME": name, "TRACES": ""}  # a shell's TRACES=1 is not this stack's
    script = str(ROOT / "scripts" / "lesson-05.sh")
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    values = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
    yield values
    # The redis image declares VOLUME /data: each Redis container brings an anonymous volume.
    mounts = docker("inspect", "-f", "{{range .Mounts}}{{.Name}} {{end}}", f"{name}-redis")
    subprocess.run([script, "down"], env=env, capture_output=True, timeout=120)
    assert not docker("ps", "-aq", "--filter", f"label=ai-course.deployment={name}", check=False)
    left = sorted(set(mounts.split()) & set(docker("volume", "ls", "-q").split()))
    assert not left, f"`down` left the volumes {left}"


@pytest.fixture
def api_process(stack, server_process):
    """api_process(**settings) -> python -m lesson05.variations_api, as `make lesson-05` runs it.

    Afterwards every run the test started is cancelled, on whichever of its APIs still answers:
    a test that failed midway leaves no run going, which the next test's client would otherwise
    be refused for (too_many_client_runs, one run per client)."""
    started: list[ServerProcess] = []
    before = set(variations.TOKENS)

    def start(**settings) -> ServerProcess:
        image = os.environ.get("WORKER_IMAGE", "research-agent:lesson-05")
        script = [sys.executable, "-m", "lesson05.variations_api"]
        server = server_process(script, cwd=ROOT, **stack, WORKER_IMAGE=image, **settings)
        started.append(server)
        return server

    yield start
    for run_id in set(variations.TOKENS) - before:
        for server in reversed(started):
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(
                    f"{server.url}/v1/runs/{run_id}", headers=variations.auth(run_id), timeout=30
                )
                break
