"""The sandbox pool (SANDBOX_POOL_SIZE): containers started ahead, each serving exactly one run.

Marker `container`, like the hostile suite. The lesson's API runs with a pool of 2; every case here
waits until both pooled containers are ready, so its run is served by one of them. Each run prints
its hostname, which Docker sets to the container's short id: that is how a test knows which
container served it. Nothing may survive from one run to the next: not a file in /tmp, not a
process, not an environment variable, and no pooled container may hold anything of an earlier run.

The hostile suite runs its cases that fit the default timeout against a pooled API as well
(FRESH_AND_POOLED in test_hostile.py); the flags test below shows a pooled container has the same
flags as a fresh one.
"""

import json
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from docker.errors import APIError

from research_agent.sandbox.pool import POOL_REQUEST_ID, ContainerPool
from research_agent.sandbox.runner import LABEL, SandboxConfig, SandboxRunner, remove
from research_agent.sandbox.sweep import Sweeper
from support.waiting import wait_for
from tests.support.sandbox_api import (
    RESULT_FIELDS,
    containers,
    idle_pooled,
    while_counting_containers,
)
from tests.support.sandbox_api import SandboxApi as Server

pytestmark = pytest.mark.container
POOL_SIZE, MAX_CONCURRENT = 2, 4


@pytest.fixture(scope="module")
def api_settings() -> dict[str, str]:
    # A SIGTERM'd API removes its idle pooled containers too (the `server` fixture checks).
    return {
        "SANDBOX_POOL_SIZE": str(POOL_SIZE),
        "SANDBOX_MAX_CONCURRENT": str(MAX_CONCURRENT),
        "SANDBOX_MAX_QUEUED": "20",
        "SANDBOX_MAX_PER_CLIENT": "20",
    }


@pytest.fixture(autouse=True)
def pool_ready(request, server, engine):
    """Every case starts with a full pool, and shows the API's log if it fails."""
    wait_for(lambda: full_pool(engine, server), timeout=60, what="a full pool")
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- lesson API log (tail) ---\n{server.logs()}")


# --- helpers -------------------------------------------------------------------------------------


def idle(engine, server: Server) -> dict[str, object]:
    return idle_pooled(engine, server.owner)


def full_pool(engine, server: Server) -> bool:
    """The pool full, and nothing else left: a container that served a run is removed just after
    its answer, and may still be running a moment, pool label and all."""
    return len(idle(engine, server)) == len(containers(engine, server.owner)) == POOL_SIZE


def run_json(server: Server, code: str) -> dict:
    """Run code that prints one JSON object, with the hostname and uid of its container."""
    prelude = "import json, os, socket\nseen = {'host': socket.gethostname(), 'uid': os.getuid()}\n"
    response = server.http.post("/v1/tools/python", json={"code": prelude + textwrap.dedent(code)})
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == RESULT_FIELDS and result["exit_code"] == 0, result
    return json.loads(result["stdout"])


# --- nothing survives between runs -------------------------------------------------------------


def test_a_file_written_in_tmp_by_one_run_is_absent_in_the_next(server, engine):
    ready = idle(engine, server)
    first = run_json(
        server,
        """
        open("/tmp/left-behind", "w").write("secret of run 1")
        print(json.dumps({**seen, "tmp": os.listdir("/tmp")}))
        """,
    )
    second = run_json(server, 'print(json.dumps({**seen, "tmp": os.listdir("/tmp")}))')
    assert first["tmp"] == ["left-behind"] and second["tmp"] == []
    assert first["host"] in ready and second["host"] in ready  # both served by the pool
    assert first["host"] != second["host"]


def test_a_process_left_running_by_one_run_is_gone(server, engine):
    first = run_json(
        server,
        """
        import subprocess, sys
        # Its own session, not waited for: it outlives the program unless the container ends.
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                         start_new_session=True)
        print(json.dumps(seen))
        """,
    )
    second = run_json(
        server,
        """
        cmdlines = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdlines.append(open(f"/proc/{pid}/cmdline", "rb").read().decode())
                except OSError:
                    pass
        print(json.dumps({**seen, "cmdlines": cmdlines}))
        """,
    )
    assert first["host"] != second["host"]
    assert not any("sleep(600)" in line for line in second["cmdlines"]), second["cmdlines"]
    assert len(second["cmdlines"]) <= 3  # the watchdog, this program, nothing else
    # On the host: the first run's container, and the process in it, no longer exist (it is
    # removed just after the answer, off the run's path).
    wait_for(
        lambda: all(not c.id.startswith(first["host"]) for c in containers(engine, server.owner)),
        timeout=30,
        what="the first run's container gone",
    )


def test_environment_changes_do_not_carry_over(server):
    first = run_json(
        server,
        """
        os.environ["LEFT_BEHIND"] = "run 1"
        os.environ["PATH"] = "/tmp:" + os.environ["PATH"]
        print(json.dumps({**seen, "env": dict(os.environ)}))
        """,
    )
    second = run_json(server, 'print(json.dumps({**seen, "env": dict(os.environ)}))')
    assert first["env"]["LEFT_BEHIND"] == "run 1"
    assert "LEFT_BEHIND" not in second["env"]
    assert not second["env"]["PATH"].startswith("/tmp:")
    assert first["host"] != second["host"]


def test_no_pooled_container_holds_anything_of_an_earlier_run(server, engine):
    served = [run_json(server, "print(json.dumps(seen))") for _ in range(2 * POOL_SIZE)]
    hosts, uids = {s["host"] for s in served}, {s["uid"] for s in served}
    assert len(hosts) == len(served) and len(uids) == len(served)  # one container, one uid each
    # Each served container is removed just after its answer (off the run's path): none is left.
    wait_for(
        lambda: not {c.id[:12] for c in containers(engine, server.owner)} & hosts,
        timeout=30,
        what="the containers that served a run removed",
    )
    wait_for(lambda: len(idle(engine, server)) == POOL_SIZE, timeout=60, what="a full pool")
    for short_id, container in idle(engine, server).items():
        container.reload()
        assert short_id not in hosts  # never served a run: each served container was removed
        assert int(container.attrs["Config"]["User"].split(":")[0]) not in uids

        # The watchdog, and the interpreter it started ahead, waiting for a program on its pipe:
        # nothing of a run has reached it yet.
        def processes(container=container) -> list[str]:
            return sorted(process[-1] for process in container.top()["Processes"])

        # (The watchdog may still be starting it as the pool takes the container in.)
        wait_for(lambda: len(processes()) == 2, timeout=30, what="the interpreter started")
        found = processes()
        assert any(line.startswith("python -I -c") for line in found), found  # the watchdog
        assert any(line.endswith("python -I -u -") for line in found), found  # the interpreter
    # And none of the containers that served a run exists any more.
    left = {c.id[:12] for c in containers(engine, server.owner)}
    assert not left & hosts


def test_a_pooled_container_has_exactly_the_flags_of_a_fresh_one(server, engine):
    pooled = next(iter(idle(engine, server).values()))
    pooled.reload()
    runner = SandboxRunner(SandboxConfig(owner=f"{server.owner}-fresh"))
    fresh = runner.create(runner.config.timeout_seconds, "fresh", runner.take_uid())
    try:
        fresh.reload()
        assert pooled.attrs["HostConfig"] == fresh.attrs["HostConfig"]
        pooled_config, fresh_config = pooled.attrs["Config"], fresh.attrs["Config"]
        for key in ("Image", "Env", "Entrypoint", "WorkingDir", "OpenStdin", "AttachStdin"):
            assert pooled_config[key] == fresh_config[key], key
        # The command differs in one argument only: how long the watchdog waits for its run.
        assert pooled_config["Cmd"][:-1] == fresh_config["Cmd"][:-1]
        assert pooled_config["Cmd"][-1] == "120" and fresh_config["Cmd"][-1] == "12"
    finally:
        fresh.remove(force=True)
        runner.close()


def test_20_concurrent_runs_with_the_pool_never_exceed_max_concurrent_containers(server, engine):
    def twenty_runs() -> list:
        with ThreadPoolExecutor(20) as pool:
            return list(pool.map(lambda i: run_json(server, f"print({i} * {i})"), range(20)))

    results, most = while_counting_containers(engine, server.owner, twenty_runs)
    assert results == [i * i for i in range(20)]
    assert most <= MAX_CONCURRENT  # the pool's containers count, running or idle
    wait_for(
        lambda: len(idle(engine, server)) == POOL_SIZE, timeout=60, what="a full pool"
    )  # refilled
    assert "in pooled container" in server.logs()


# --- the fallback: an empty pool never makes a run wait ----------------------------------------


class StuckRefills(SandboxRunner):
    """The pool's refills wait in Docker's create until the test lets them go; runs do not."""

    def __init__(self, config: SandboxConfig):
        super().__init__(config)
        self.release = threading.Event()

    def create(self, timeout, request_id, uid, idle=None):
        if request_id == POOL_REQUEST_ID:
            assert self.release.wait(60), "the test never let the refill go"
        return super().create(timeout, request_id, uid, idle)


def test_with_the_pool_empty_a_run_goes_to_a_fresh_container_without_waiting(engine):
    owner = f"test-pool-{uuid.uuid4().hex[:8]}"
    # Two places: the stuck refill holds one, and the run must not wait for it. (With one place
    # the run must wait: the next test.)
    runner = StuckRefills(SandboxConfig(owner=owner, pool_size=1, max_concurrent=2))
    pool = ContainerPool(runner)
    try:
        pool.start()
        wait_for(lambda: pool._refilling == 1, timeout=10, what="the refill started")
        result = pool.run("import socket; print(socket.gethostname())", request_id="fallback")
        # It ran while the refill was still stuck: it cannot have waited behind it.
        assert not runner.release.is_set()
        assert result.exit_code == 0 and result.stdout.strip()
        assert containers(engine, owner) == []  # its fresh container, removed
        runner.release.set()
        # The refill goes on and fills the pool, with nothing else made meanwhile.
        counts = []

        def one_pooled() -> bool:
            found = containers(engine, owner)
            counts.append(len(found))
            return [c.status for c in found] == ["running"]

        wait_for(one_pooled, timeout=60, interval=0.05, what="one pooled container")
        assert max(counts) <= 1
        (pooled,) = containers(engine, owner, POOL_REQUEST_ID)
        assert pooled.id[:12] != result.stdout.strip()
    finally:
        runner.release.set()
        pool.close()
        runner.close()
    assert containers(engine, owner) == []  # close() removes the pool


# --- the count: a place is free only once its container is gone ---------------------------------
# `make sandbox-test` once saw 5 containers with max_concurrent 4 (the 20 runs above, under load):
# a refill the keeper started just as a run was let in made a container, and the run, which
# needed that place, made its own beside it. The engine's 409 "removal in progress", which
# remove() took for "gone", freed a place early too.


class HeldRefills(SandboxRunner):
    """The pool's refills stop once Docker has created their container, until the test lets them
    go; each fresh run records how many of the runner's containers exist as it creates its own."""

    def __init__(self, config: SandboxConfig, engine):
        super().__init__(config)
        self.engine, self.created, self.release = engine, threading.Event(), threading.Event()
        self.existing_at_fresh_create: list[int] = []

    def create(self, timeout, request_id, uid, idle=None):
        if request_id != POOL_REQUEST_ID:
            self.existing_at_fresh_create.append(len(containers(self.engine, self.config.owner)))
            return super().create(timeout, request_id, uid, idle)
        container = super().create(timeout, request_id, uid, idle)
        self.created.set()
        assert self.release.wait(60), "the test never let the refill go"
        return container


def test_a_run_whose_place_a_refill_holds_never_makes_a_container_beside_it(engine):
    owner = f"test-pool-{uuid.uuid4().hex[:8]}"
    # One place in all, and the refill has made its container in it when the run comes.
    runner = HeldRefills(SandboxConfig(owner=owner, pool_size=1, max_concurrent=1), engine)
    pool = ContainerPool(runner)
    try:
        pool.start()
        assert runner.created.wait(30), "the refill made no container"
        with ThreadPoolExecutor(1) as threads:
            ran = threads.submit(pool.run, "print(6 * 7)", request_id="needs-the-place")
            # The run asks for the place back; the refill gives it back once Docker answers.
            wait_for(lambda: pool._surplus == 1, timeout=10, what="the run to claim the place")
            runner.release.set()
            result = ran.result(timeout=60)
        assert result.exit_code == 0 and result.stdout == "42\n"
        assert runner.existing_at_fresh_create == [0]  # the refill's container was gone
    finally:
        runner.release.set()
        pool.close()
        runner.close()
    assert containers(engine, owner) == []


class BeingRemoved:
    """A container the engine is removing already (auto_remove, as it exited): a removal asked
    for now gets the engine's 409 "removal of container ... is already in progress"."""

    def __init__(self, container):
        self.container, self.id = container, container.id

    def remove(self, force: bool = False):
        response = requests.Response()
        response.status_code = 409
        raise APIError("409 Conflict", response, "removal of container is already in progress")

    def wait(self, **kwargs):
        return self.container.wait(**kwargs)


def test_remove_returns_once_a_container_the_engine_is_removing_is_gone(engine):
    owner = f"test-pool-{uuid.uuid4().hex[:8]}"
    runner = SandboxRunner(SandboxConfig(owner=owner))
    try:
        # Its watchdog waits 3 s for a run, then ends it: the engine removes it (auto_remove).
        container = runner.create(1, "removing", runner.take_uid(), idle=3)
        container.start()
        remove(BeingRemoved(container))
        assert containers(engine, owner) == []  # its place is free only now
    finally:
        runner.close()


# --- the clocks: a run's deadline starts with the run; an unused container ends by itself --------


def test_a_pooled_run_gets_its_whole_timeout_however_long_its_container_waited(engine):
    owner = f"test-pool-{uuid.uuid4().hex[:8]}"
    runner = SandboxRunner(SandboxConfig(owner=owner, pool_size=1, timeout_seconds=2))
    pool = ContainerPool(runner)
    try:
        pool.start()
        wait_for(lambda: pool._idle, timeout=60, what="the pool filled")
        (waiting,) = list(pool._idle)
        time.sleep(5)  # longer than the run's deadline (2 s + 2 s of grace) had it started then
        code = "import socket, time; time.sleep(1); print(socket.gethostname())"
        result = pool.run(code)
        assert (result.exit_code, result.timed_out) == (0, False), result
        assert result.stdout.strip() == waiting.container.id[:12]  # the container that waited
    finally:
        pool.close()
        runner.close()
    assert containers(engine, owner) == []


def test_an_unused_pooled_container_ends_by_itself_and_no_sweep_takes_it_while_it_waits(engine):
    # As if its API had died: nobody will ever send it a run.
    owner = f"test-pool-{uuid.uuid4().hex[:8]}"
    runner = SandboxRunner(SandboxConfig(owner=owner))
    container = runner.create(10, POOL_REQUEST_ID, runner.take_uid(), idle=3)
    try:
        container.start()
        container.reload()
        assert int(container.labels[f"{LABEL}.expires"]) >= time.time() + 3 + 12
        Sweeper(runner).sweep()  # a sweep while it waits leaves it alone
        container.reload()
        assert container.status == "running"

        # It ends, and the engine removes it (auto_remove): the wait answers once it is gone.
        ended = engine.api.wait(container.id, timeout=30, condition="removed")
        assert ended["StatusCode"] == 137  # its watchdog's idle limit
        assert containers(engine, owner) == []
    finally:
        remove(container)
        runner.close()
