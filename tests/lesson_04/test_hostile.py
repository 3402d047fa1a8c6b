"""The hostile suite: code that attacks the sandbox, sent to the lesson's API, in real containers.

Each case asserts what the API answered and what the host saw (Docker's view of the container, the
API process's memory and file descriptors), not only what the code printed. Marker `container`:
`make sandbox-test` runs it (CI too); it needs Docker and agent-sandbox:python (`make build`).
The API runs as a real uvicorn process with a label owner of its own, so the last check can say
that nothing it created is left, whatever else runs on this Docker engine.
"""

import asyncio
import contextlib
import signal
import textwrap
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx
import pytest
from docker.constants import DEFAULT_MAX_POOL_SIZE

from research_agent.sandbox import sweep
from research_agent.sandbox.exit import Ending, EndWatch
from research_agent.sandbox.runner import (
    LABEL,
    MASKED_PATHS,
    SECCOMP_PROFILE,
    SandboxConfig,
    SandboxRunner,
    SandboxUnavailable,
    remove,
)
from research_agent.sandbox.sweep import Sweeper
from support.waiting import wait_for
from tests.support.sandbox_api import (
    CANARY,
    OPENED,
    containers,
    idle_pooled,
    post,
    printed,
    run,
    runtime_settings,
    while_counting_containers,
)
from tests.support.sandbox_api import SandboxApi as Server

pytestmark = pytest.mark.container
MAX_CONCURRENT = 4


POOL_SIZE = 2
# The cases whose runs fit the default timeout run twice: on fresh containers and on an API with a
# pool, since a pooled container (made before its code was known) must hold every restriction too.
# Cases that ask for a longer timeout go to a fresh container by design (test_pool.py shows that a
# pooled container has the same flags as a fresh one).
FRESH_AND_POOLED = pytest.mark.parametrize("api_settings", ["fresh", "pooled"], indirect=True)


@pytest.fixture(scope="module")
def api_forked() -> bool:
    """Exec'ed: this suite reads the API's /proc/PID/environ and its peak memory."""
    return False


@pytest.fixture(scope="module", params=["fresh"])
def api_settings(request, runtime) -> dict[str, str]:
    # One client (this suite) sends up to 20 runs at once: its share and the queue allow that here;
    # test_one_client_gets_its_share_and_a_429_beyond_it runs with the defaults.
    settings = {
        **runtime_settings(runtime),
        "SANDBOX_MAX_CONCURRENT": str(MAX_CONCURRENT),
        "SANDBOX_MAX_QUEUED": "20",
        "SANDBOX_MAX_PER_CLIENT": "20",
    }
    if request.param == "pooled":
        settings["SANDBOX_POOL_SIZE"] = str(POOL_SIZE)
    return settings


@pytest.fixture(autouse=True)
def show_server_log_on_failure(request, server, engine, api_settings):
    if "SANDBOX_POOL_SIZE" in api_settings:
        # A full pool first, so the case's run is served by a pooled container, and the last
        # case's containers gone (each is removed just after its answer).
        wait_for(lambda: len(idle_pooled(engine, server.owner)) == POOL_SIZE, timeout=60)
        wait_for(lambda: len(containers(engine, server.owner)) == POOL_SIZE, timeout=60)
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"--- lesson API log (tail) ---\n{server.logs()}")


# --- helpers -----------------------------------------------------------------------------------


def in_background(server: Server, code: str, timeout: float, request_id: str, raw=False):
    """The run's result (or with raw=True the HTTP response, whatever its status), later."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(post if raw else run, server, code, timeout, request_id)
    pool.shutdown(wait=False)
    return future


def running(engine, server: Server, request_id: str):
    """The container of this request, once Docker shows it running (it must within 30 s)."""

    def found():
        return [c for c in containers(engine, server.owner, request_id) if c.status == "running"]

    matches = wait_for(
        found, timeout=30, interval=0.2, what=f"a running container for {request_id}"
    )
    matches[0].reload()  # the full inspect: HostConfig, Config
    return matches[0]


# --- the cases ---------------------------------------------------------------------------------


@FRESH_AND_POOLED
def test_a_plain_run_answers_with_its_output(server, engine):
    request_id = f"plain-{uuid.uuid4().hex[:8]}"
    result = run(server, "print(2**100)", request_id=request_id)
    assert result["stdout"] == "1267650600228229401496703205376\n"
    assert (result["exit_code"], result["timed_out"], result["truncated"]) == (0, False, False)
    # By the time the API answers, the container is already removed.
    assert containers(engine, server.owner, request_id) == []


def test_the_host_sees_every_restriction_and_the_request_id(server, engine, runtime):
    request_id = f"flags-{uuid.uuid4().hex[:8]}"
    future = in_background(server, "import time; time.sleep(5)", 10, request_id)
    container = running(engine, server, request_id)
    host, config = container.attrs["HostConfig"], container.attrs["Config"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,noexec,nosuid,nodev,size=16m"}
    assert host["Memory"] == host["MemorySwap"] == 128 * 2**20
    assert host["NanoCpus"] == 500_000_000
    # gVisor's own threads count in the container's cgroup: four times the places (pids_for).
    assert host["PidsLimit"] == (64 if runtime == "runc" else 256)
    assert (host["Runtime"] or "runc") == runtime
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges", f"seccomp={SECCOMP_PROFILE}"]
    assert host["MaskedPaths"] == MASKED_PATHS
    assert host["Ulimits"] == [{"Name": "cpu", "Soft": 12, "Hard": 12}]  # 10 s + 2 s of grace
    assert host["Init"] is False  # PID 1 is the runner's watchdog, which also reaps
    assert host["LogConfig"]["Type"] == "none"
    assert host["AutoRemove"] is True  # the engine removes it as it exits, with or without us
    assert host["Binds"] in (None, [])  # nothing of the host is mounted, the Docker socket least
    uid, gid = map(int, config["User"].split(":"))
    assert uid == gid and 1_500_000_000 <= uid < 1_501_000_000  # a uid of its own, not nobody's
    assert config["Image"] == "agent-sandbox:python"
    assert config["Labels"][f"{LABEL}.request-id"] == request_id
    assert config["Labels"][f"{LABEL}.owner"] == server.owner
    assert int(config["Labels"][f"{LABEL}.expires"]) > time.time()
    assert future.result(timeout=60)["exit_code"] == 0
    assert containers(engine, server.owner, request_id) == []


def test_fork_bomb_is_held_by_the_pids_limit_while_the_api_keeps_answering(server, engine, runtime):
    request_id = f"forkbomb-{uuid.uuid4().hex[:8]}"
    code = """
        import errno, os, time
        forked = 0
        while True:
            try:
                pid = os.fork()
            except OSError as exc:
                print(forked, errno.errorcode[exc.errno], flush=True)
                break
            if pid == 0:  # every child forks as well, for ever
                while True:
                    try:
                        os.fork()
                    except OSError:
                        time.sleep(0.01)
            forked += 1
        time.sleep(60)
    """
    future = in_background(server, code, 6, request_id)
    container = running(engine, server, request_id)
    assert server.http.get("/health", timeout=10).status_code == 200  # the API is not starved
    counts = []  # what the host counts in the container, until the kill ends it
    while not future.done() and len(counts) < 200:
        try:
            processes = container.top()["Processes"]
        except docker.errors.APIError:  # gone, or no longer running
            break
        if processes is None:  # killed and not yet removed: the engine lists no process at all
            break
        counts.append(len(processes))
        time.sleep(0.1)
    result = future.result(timeout=60)
    if runtime != "runc":
        # gVisor: the limit holds its kernel's threads too (256 places), and when it is reached
        # the whole sandbox ends (killed, or gVisor exits 2), nothing printed, removed; the API
        # kept answering. The sandbox may end before the first look (counts is then empty: the
        # run went too fast to watch, not past its limit).
        assert max(counts, default=0) <= 256
        assert result["exit_code"] in (2, 137) and result["stdout"] == "", result
        assert containers(engine, server.owner, request_id) == []
        return
    assert counts and max(counts) <= 64
    forked, error = result["stdout"].split()
    assert error == "EAGAIN" and int(forked) < 64
    assert result["timed_out"] and result["exit_code"] == 137
    assert containers(engine, server.owner, request_id) == []


def test_memory_bomb_is_oom_killed(server, engine, runtime):
    request_id = f"membomb-{uuid.uuid4().hex[:8]}"
    code = """
        chunks = []
        while True:
            chunks.append(bytearray(8 * 1024 * 1024))
    """
    result = run(server, code, timeout=20, request_id=request_id)
    if runtime == "runc":
        assert result["oom_killed"] is True
    # Under gVisor the cgroup's kill may land on the sandbox's kernel (the Sentry) or on the
    # program inside it: Docker then reports the exit without its OOMKilled flag.
    assert result["exit_code"] == 137 and result["timed_out"] is False
    assert containers(engine, server.owner, request_id) == []


def test_oom_killed_is_the_kernels_count_when_the_engines_event_is_missing(
    server, runtime, monkeypatch
):
    """On a busy machine the engine sometimes sends no `oom` event for a container the OOM killer
    struck; the watchdog's last line still says so, from its cgroup's own count. A program that
    kills itself with SIGKILL ends with 137 too, and is not reported as out of memory."""
    if runtime != "runc":
        pytest.skip("an in-process runner on the default runtime (runc): once for the suite")
    with_events = EndWatch.ending
    monkeypatch.setattr(
        EndWatch, "ending", lambda self: Ending(with_events(self).exit_code, oom_killed=False)
    )
    runner = SandboxRunner(SandboxConfig(owner=server.owner))
    try:
        bomb = runner.run("chunks = []\nwhile True:\n    chunks.append(bytearray(8 << 20))", 20)
        killed = runner.run("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 20)
    finally:
        runner.close()
    assert (bomb.exit_code, bomb.oom_killed, bomb.timed_out) == (137, True, False)
    assert (killed.exit_code, killed.oom_killed, killed.timed_out) == (137, False, False)


@FRESH_AND_POOLED
def test_an_infinite_loop_times_out_and_its_container_is_gone(server, engine):
    request_id = f"loop-{uuid.uuid4().hex[:8]}"
    result = run(server, "while True:\n    pass", timeout=2, request_id=request_id)
    assert result["timed_out"] is True and result["exit_code"] == 137
    assert 2000 <= result["duration_ms"] < 2000 + 15_000  # killed at its deadline, not later
    assert containers(engine, server.owner, request_id) == []


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_100_mb_of_output_is_truncated_and_the_api_memory_stays_bounded(server, stream):
    peak_before = server.status("VmHWM")
    code = f"""
        import sys
        for _ in range(100):
            sys.{stream}.write("x" * 1_000_000)
    """
    result = run(server, code, timeout=20)
    assert result["truncated"] is True
    assert result[stream] == "x" * 64 * 1024
    assert result["timed_out"] is False and result["exit_code"] == 137  # stopped once over the cap
    assert server.status("VmHWM") - peak_before < 30_000  # kB: far less than the 100 MB sent


@FRESH_AND_POOLED
def test_the_network_is_off_for_dns_and_tcp(server, runtime):
    code = """
        import errno, json, socket
        out = {"interfaces": [name for _, name in socket.if_nameindex()]}
        try:
            socket.getaddrinfo("example.com", 443)
            out["dns"] = "resolved"
        except OSError as exc:
            out["dns"] = type(exc).__name__
        try:  # 192.0.2.1 is TEST-NET-1, an address reserved for documentation
            socket.create_connection(("192.0.2.1", 80), timeout=3)
            out["tcp"] = "connected"
        except OSError as exc:
            out["tcp"] = errno.errorcode.get(exc.errno, repr(exc))
        print(json.dumps(out))
    """
    assert printed(run(server, code)) == {
        "interfaces": ["lo"],
        "dns": "gaierror",
        # gVisor's network stack is off (runsc): it answers as a host with no route would.
        "tcp": "ENETUNREACH" if runtime == "runc" else "EHOSTUNREACH",
    }


@FRESH_AND_POOLED
def test_writes_to_the_image_fail_and_tmp_stops_at_its_size(server, runtime):
    code = """
        import errno, json
        out = {}
        for path in ["/evil", "/usr/local/bin/python", "/etc/passwd"]:
            try:
                with open(path, "a") as f:
                    f.write("x")
                out[path] = "written"
            except OSError as exc:
                out[path] = errno.errorcode[exc.errno]
        written = 0
        try:
            with open("/tmp/fill", "wb") as f:
                for _ in range(32):
                    f.write(b"\\0" * 1024 * 1024)
                    f.flush()
                    written += 1
        except OSError as exc:
            out["/tmp"] = errno.errorcode[exc.errno]
        out["tmp_mb"] = written
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    # The read-only root: no new file anywhere (gVisor checks the directory's owner first).
    assert out["/evil"] == ("EROFS" if runtime == "runc" else "EACCES")
    assert out["/usr/local/bin/python"] == out["/etc/passwd"] == "EACCES"  # not the run's
    assert out["/tmp"] == "ENOSPC" and out["tmp_mb"] <= 16  # 16 MiB of 32 fit, no more


@FRESH_AND_POOLED
def test_the_sandbox_sees_no_secret_of_the_host(server, runtime):
    assert CANARY in Path(f"/proc/{server.process.pid}/environ").read_text()  # the API has it
    code = """
        import json, os
        try:  # PID 1 is the watchdog: not dumpable, so not even its environment can be read
            pid1 = open("/proc/1/environ").read()
        except PermissionError:
            pid1 = "EACCES"
        print(json.dumps({
            "pid1": pid1,
            "self": open("/proc/self/environ").read(),
            "env": sorted(os.environ),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        }))
    """
    result = run(server, code)
    assert CANARY not in result["stdout"]
    out = printed(result)
    assert set(out["env"]) <= {"PATH", "HOSTNAME", "LANG", "HOME", "PYTHONDONTWRITEBYTECODE"}
    assert "KEY" not in out["pid1"] and "OPENAI" not in out["self"]
    if runtime == "runc":
        assert out["pid1"] == "EACCES"
    else:  # gVisor lets the same uid read it: the container's own environment, nothing more
        names = {entry.split("=")[0] for entry in out["pid1"].split("\0") if entry}
        assert names <= {"PATH", "HOSTNAME", "LANG", "HOME", "PYTHONDONTWRITEBYTECODE"}, names
    assert len(out["pids"]) <= 3  # its own pid namespace: the watchdog, python, nothing of the host


@FRESH_AND_POOLED
def test_privilege_escalation_attempts_fail(server, runtime):
    code = """
        import ctypes, errno, json, os
        libc = ctypes.CDLL(None, use_errno=True)

        def call(name, *args):
            return "ok" if getattr(libc, name)(*args) == 0 else errno.errorcode[ctypes.get_errno()]

        out = {"uid": os.getuid()}
        status = dict(
            line.split(":", 1) for line in open("/proc/self/status").read().splitlines()
        )
        for field in ("CapEff", "CapPrm", "NoNewPrivs", "Seccomp"):
            out[field] = status.get(field, "missing").strip()  # gVisor's has no NoNewPrivs
        try:
            os.setuid(0)
            out["setuid"] = "ok"
        except OSError as exc:
            out["setuid"] = errno.errorcode[exc.errno]
        out["unshare_user"] = call("unshare", 0x10000000)  # CLONE_NEWUSER
        out["unshare_mount"] = call("unshare", 0x00020000)  # CLONE_NEWNS
        out["mount"] = call("mount", b"none", b"/tmp", b"tmpfs", 0, None)
        out["chroot"] = call("chroot", b"/tmp")
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    assert 1_500_000_000 <= out.pop("uid") < 1_501_000_000
    if runtime != "runc":
        # gVisor: a new user namespace is gVisor's, and with it mount and chroot inside it
        # (test_runtimes.py); it applies no seccomp filter of its own to the program.
        # Its /proc/self/status has no NoNewPrivs line, and no seccomp filter (Seccomp: 0).
        assert {k: out[k] for k in ("setuid", "CapEff", "CapPrm", "NoNewPrivs", "Seccomp")} == {
            "setuid": "EPERM",
            "CapEff": "0000000000000000",
            "CapPrm": "0000000000000000",
            "NoNewPrivs": "missing",
            "Seccomp": "0",
        }
        return
    assert out == {
        "setuid": "EPERM",
        "unshare_user": "EPERM",
        "unshare_mount": "EPERM",
        "mount": "EPERM",
        "chroot": "EPERM",
        "CapEff": "0000000000000000",
        "CapPrm": "0000000000000000",
        "NoNewPrivs": "1",
        "Seccomp": "2",  # the runner's seccomp profile filters the system calls
    }


@FRESH_AND_POOLED
def test_there_is_no_shell_no_pip_and_no_docker_socket(server):
    code = """
        import importlib.util, json, os, subprocess
        out = {"os.system": os.system("id")}
        try:
            subprocess.run(["sh", "-c", "id"])
            out["sh"] = "ran"
        except FileNotFoundError:
            out["sh"] = "missing"
        out["pip"] = importlib.util.find_spec("pip") is not None
        out["docker.sock"] = os.path.exists("/var/run/docker.sock")
        print(json.dumps(out))
    """
    assert printed(run(server, code)) == {
        "os.system": 127 << 8,  # no /bin/sh to run it
        "sh": "missing",
        "pip": False,
        "docker.sock": False,
    }


@FRESH_AND_POOLED
def test_tmp_is_noexec_so_a_copied_binary_cannot_run(server):
    code = """
        import errno, os, shutil, sys
        shutil.copy(sys.executable, "/tmp/python")
        os.chmod("/tmp/python", 0o755)
        try:
            os.execv("/tmp/python", ["python", "-c", "print('escaped')"])
        except OSError as exc:
            print(errno.errorcode[exc.errno])
    """
    assert run(server, code)["stdout"] == "EACCES\n"


@FRESH_AND_POOLED
def test_kernel_interfaces_are_read_only(server):
    code = """
        import errno, json
        out = {}
        paths = ["/proc/sysrq-trigger", "/proc/sys/kernel/hostname", "/sys/kernel/uevent_helper"]
        for path in paths:
            try:
                with open(path, "w") as f:
                    f.write("x")
                out[path] = "written"
            except OSError as exc:
                out[path] = errno.errorcode[exc.errno]
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    assert set(out.values()) <= {"EROFS", "EACCES", "EPERM", "ENOENT"}, out


def test_the_cpu_limit_holds_a_busy_loop_to_half_a_core(server, runtime):
    code = """
        import time
        wall, cpu = time.monotonic(), time.process_time()
        while time.monotonic() - wall < 2:
            pass
        print(round((time.process_time() - cpu) / (time.monotonic() - wall), 2))
    """
    share = float(run(server, code, timeout=20)["stdout"])
    # 0.5 CPU plus scheduling slack; gVisor's clock counts its own kernel's work for the program
    # too, so its share reads higher (an unlimited loop reads about 1.0 under either runtime).
    assert share <= (0.75 if runtime == "runc" else 0.9), share


@FRESH_AND_POOLED
def test_binary_output_is_returned_as_text_not_an_error(server):
    result = run(server, "import sys; sys.stdout.buffer.write(b'ok\\xff\\xfe\\x00')")
    assert result["stdout"] == "ok\ufffd\ufffd\x00"


def test_a_sleep_that_outlives_the_request_is_killed_and_removed(server, engine):
    request_id = f"outlives-{uuid.uuid4().hex[:8]}"
    failure = {}

    def client_gives_up() -> None:
        with httpx.Client(base_url=server.url, timeout=1.5) as impatient:
            try:
                post(server, "import time; time.sleep(600)", 4, request_id, http=impatient)
            except httpx.TimeoutException as exc:
                failure["error"] = exc

    thread = threading.Thread(target=client_gives_up)
    thread.start()
    running(engine, server, request_id)  # the run started, whenever the client gives up
    thread.join(timeout=30)
    assert isinstance(failure.get("error"), httpx.TimeoutException)
    # The client is gone; the container is killed at its own deadline and removed.
    wait_for(
        lambda: not containers(engine, server.owner, request_id),
        timeout=4 + 30,
        what="no container",
    )
    assert server.http.get("/health").status_code == 200


def test_20_concurrent_runs_are_all_answered_and_none_is_leaked(server, engine):
    def twenty_runs() -> list:
        with ThreadPoolExecutor(20) as pool:
            return list(pool.map(lambda i: run(server, f"print({i} * {i})"), range(20)))

    results, most = while_counting_containers(engine, server.owner, twenty_runs)
    assert [r["stdout"] for r in results] == [f"{i * i}\n" for i in range(20)]
    assert most <= MAX_CONCURRENT  # the rest waited for a free slot
    assert containers(engine, server.owner) == []


def test_one_client_gets_its_share_and_a_429_beyond_it(engine):
    # Defaults: two runs per client address. Six at once from one client: two run, four are
    # refused at once with Retry-After, and nothing is left behind.
    small = Server()
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: post(small, "import time; time.sleep(3)"), range(6)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 200, 429, 429, 429, 429], statuses
        refused = [a for a in answers if a.status_code == 429]
        assert all(a.json()["error"]["type"] == "too_many_runs" for a in refused)
        assert all(a.headers["retry-after"].isdigit() for a in refused)
        assert small.http.post("/v1/tools/python", json={"code": "print(1)"}).status_code == 200
    finally:
        small.stop()
    wait_for(lambda: not containers(engine, small.owner), timeout=30, what="no container left")


@FRESH_AND_POOLED
def test_runs_leave_no_open_socket_in_the_api(server, engine, api_settings, runtime):
    # The sockets counted are the API's own, to the Docker daemon: the same code whatever runtime
    # the daemon starts the sandbox with, and 50 runs under gVisor took two minutes more.
    if runtime != "runc":
        pytest.skip(
            "the API's sockets to the daemon, whatever the runtime: counted under runc "
            "(make sandbox-test PYTEST_ARGS=\"-k 'not runsc'\")"
        )

    def settled() -> None:
        # Each pooled container holds two connections while it waits (its events, its stdin and
        # stdout): count with the pool full, and the last runs' containers removed.
        if "SANDBOX_POOL_SIZE" in api_settings:
            wait_for(lambda: len(idle_pooled(engine, server.owner)) == POOL_SIZE, timeout=60)
            wait_for(lambda: len(containers(engine, server.owner)) == POOL_SIZE, timeout=60)

    # A leak grows with the runs; the Docker client's connection pool does not: it keeps at most
    # DEFAULT_MAX_POOL_SIZE (10) idle connections, however many runs used them, and how many it
    # holds at one moment depends on how the removals after the answers met the next runs (more
    # of them under load). 40 runs, one in four leaking a socket, are 10 over.
    for _ in range(10):
        run(server, "print(1)")
    settled()
    before = server.open_fds()
    for _ in range(40):
        run(server, "print(1)")
    settled()
    assert server.open_fds() - before <= DEFAULT_MAX_POOL_SIZE


def test_sigterm_lets_a_running_sandbox_finish_and_removes_it(engine):
    stopping = Server()
    try:
        request_id = f"sigterm-{uuid.uuid4().hex[:8]}"
        code = "import time; time.sleep(3); print('finished')"
        future = in_background(stopping, code, 10, request_id)
        running(engine, stopping, request_id)
        stopping.process.terminate()  # SIGTERM, as `docker stop` or Ctrl+C would send
        assert future.result(timeout=60)["stdout"] == "finished\n"  # the answer was not cut
        # uvicorn shuts down cleanly, then re-raises the signal to exit with it.
        assert stopping.process.wait(timeout=60) == -signal.SIGTERM
        assert "Application shutdown complete" in stopping.logs()
        assert containers(engine, stopping.owner) == []
    finally:
        stopping.stop()


def test_sigterm_refuses_queued_runs_so_the_service_stops_in_time(engine):
    # One slot; one run in it and three long runs waiting. Before: SIGTERM ran all four, one after
    # the other (12 runs of 20 s took 62 s to exit). Now the waiting ones are refused at once.
    stopping = Server(SANDBOX_MAX_CONCURRENT="1", SANDBOX_MAX_PER_CLIENT="8")
    try:
        first = f"sigterm-first-{uuid.uuid4().hex[:8]}"
        queued = [f"sigterm-queued-{i}-{uuid.uuid4().hex[:8]}" for i in range(3)]
        running_one = in_background(
            stopping, "import time; time.sleep(3); print('done')", 10, first
        )
        running(engine, stopping, first)
        waiting = [
            in_background(stopping, "import time; time.sleep(20)", 25, rid, raw=True)
            for rid in queued
        ]
        time.sleep(2)  # let the three requests reach the queue (their answers are checked below)
        stopping.process.terminate()
        assert running_one.result(timeout=60)["stdout"] == "done\n"
        for answer in (w.result(timeout=60) for w in waiting):
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["type"] == "shutting_down"
        assert stopping.process.wait(timeout=60) == -signal.SIGTERM
        for rid in queued:  # never started: no container was ever made for them
            assert not containers(engine, stopping.owner, rid)
    finally:
        stopping.stop()


@FRESH_AND_POOLED
def test_the_agent_computes_through_the_sandbox(server):
    response = server.http.post("/v1/agent", json={"query": "What is 2**100?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "offline-model"
    assert [call["code"] for call in body["tool_calls"]] == ["print(2**100)"]
    assert body["tool_calls"][0]["result"]["stdout"] == "1267650600228229401496703205376\n"
    assert "1267650600228229401496703205376" in body["answer"]


# --- issue 17: what outlives the API, what the kernel shares between runs, what it shows ----------


def test_after_a_kill_9_of_the_api_its_sandbox_ends_by_itself_and_is_removed(engine):
    # Before: nothing inside the container kept the deadline, so a spinning run burned CPU for
    # minutes after the API died. Then its exited container stayed until some API's sweep
    # (about 5 minutes); now the engine removes it as it exits (auto_remove).
    doomed, timeout = Server(), 4
    request_id = f"kill9-{uuid.uuid4().hex[:8]}"
    try:
        # Running is not enough: the API starts the container, then sends the program, and a kill
        # between the two leaves a watchdog that saw no run and exits 0. So the program execs a
        # spinning interpreter whose arguments say it came, and the kill waits for that.
        spin = (
            "import os, sys\nos.execv(sys.executable, ['python', '-c', 'while True: pass', 'came'])"
        )
        in_background(doomed, spin, timeout, request_id, raw=True)
        container = running(engine, doomed, request_id)
        # Asked before the kill: how it exits, answered once the engine has removed it.
        removed = ThreadPoolExecutor(1).submit(
            engine.api.wait, container.id, timeout=2 * timeout + 30, condition="removed"
        )

        def came() -> bool:
            processes = container.top()["Processes"] or []
            return any(process[-1].endswith("while True: pass came") for process in processes)

        wait_for(came, timeout=2 * timeout + 30, interval=0.2, what="the program running")
        doomed.process.kill()
        doomed.process.wait(timeout=10)
        assert removed.result(timeout=2 * timeout + 40)["StatusCode"] == 137  # its watchdog
        assert containers(engine, doomed.owner) == []  # no sweep has run: no API is left
    finally:
        doomed.stop()
        for container in containers(engine, doomed.owner):
            container.remove(force=True)


def test_a_running_service_sweeps_expired_containers_of_any_owner_on_a_timer(server, engine):
    # Before: only a start-up sweep, and only of the service's own containers.
    crashed = f"{server.owner}-crashed"  # another service, which died and left these behind
    runner = SandboxRunner(SandboxConfig(owner=server.owner, sweep_interval_seconds=0.5))
    sweeper = Sweeper(runner)
    labels = {f"{LABEL}.owner": crashed}
    expired = engine.containers.create(
        "agent-sandbox:python", labels={**labels, f"{LABEL}.expires": "0"}
    )
    live = engine.containers.create(
        "agent-sandbox:python", labels={**labels, f"{LABEL}.expires": str(int(time.time()) + 600)}
    )

    async def swept() -> bool:
        sweeper.start()
        for _ in range(50):  # at most 10 s
            await asyncio.sleep(0.2)
            if [c.id for c in containers(engine, crashed)] == [live.id]:
                return True
        return False

    try:
        assert asyncio.run(swept()), "the expired container was not swept"
    finally:
        sweeper.close()
        runner.close()
        for container in (live, expired):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)


@FRESH_AND_POOLED
def test_the_seccomp_profile_refuses_io_uring_vsock_ptrace_memfd_and_uevents(server, runtime):
    # Before: Engine 20.10's default profile allowed every one of these.
    code = OPENED + textwrap.dedent("""
        import ctypes, errno, json, os, platform, signal, socket, time
        libc = ctypes.CDLL(None, use_errno=True)
        arm = platform.machine() == "aarch64"
        NR = {"io_uring_setup": 425, "ptrace": 117 if arm else 101,
              "process_vm_readv": 270 if arm else 310}

        def syscall(name, *args):
            ok = libc.syscall(NR[name], *args) >= 0
            return "ok" if ok else errno.errorcode[ctypes.get_errno()]

        out = {"io_uring_setup": syscall("io_uring_setup", 1, ctypes.create_string_buffer(120))}
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        PTRACE_SEIZE = 0x4206  # attaches without stopping the process
        out["ptrace_child"] = syscall("ptrace", PTRACE_SEIZE, child, 0, 0)
        out["ptrace_init"] = syscall("ptrace", PTRACE_SEIZE, 1, 0, 0)
        out["process_vm_readv"] = syscall("process_vm_readv", child, None, 0, None, 0, 0)
        os.kill(child, signal.SIGKILL)
        out["memfd_create"] = opened(lambda: open(os.memfd_create("x"), "rb"))
        out["vsock"] = opened(lambda: socket.socket(40, socket.SOCK_STREAM))  # AF_VSOCK
        out["uevent"] = opened(lambda: socket.socket(16, socket.SOCK_DGRAM, 15))
        out["unix"] = opened(lambda: socket.socket(socket.AF_UNIX))  # what Python uses still works
        out["netlink_route"] = opened(lambda: socket.socket(16, socket.SOCK_DGRAM, 0))
        print(json.dumps(out))
    """)
    out = printed(run(server, code, timeout=10))
    if runtime != "runc":
        # gVisor answers these itself: its io_uring, its ptrace of the run's own child, its
        # memfd, in its kernel; it has no vsock and no process_vm_readv (test_runtimes.py).
        assert out == GVISOR_SYSCALLS, out
        return
    assert out == {
        "io_uring_setup": "EPERM",
        "ptrace_child": "EPERM",
        "ptrace_init": "EPERM",
        "process_vm_readv": "EPERM",
        "memfd_create": "EPERM",  # so no memfd + execve of a dropped binary despite noexec
        "vsock": "EPERM",
        "uevent": "EPERM",  # the host's device events, other containers' mounts among them
        "unix": "ok",
        "netlink_route": "ok",
    }


GVISOR_SYSCALLS = {
    "io_uring_setup": "ok",
    "ptrace_child": "ok",
    "ptrace_init": "EPERM",
    "process_vm_readv": "ENOSYS",
    "memfd_create": "ok",
    "vsock": "EAFNOSUPPORT",
    "uevent": "ok",
    "unix": "ok",
    "netlink_route": "ok",
}


def test_runs_have_their_own_uid_so_one_cannot_use_up_a_per_user_limit(server, engine):
    # Before: every run was uid 65534, and 128 inotify instances (the per-user limit) in one run
    # gave EMFILE to every other run, and to the host's processes running as nobody.
    hog_id = f"inotify-{uuid.uuid4().hex[:8]}"
    hog = """
        import ctypes, time
        libc = ctypes.CDLL(None, use_errno=True)
        held = 0
        while held < 128 and libc.inotify_init1(0) >= 0:
            held += 1
        print(held)
        time.sleep(60)
    """
    held = in_background(server, hog, 6, hog_id)
    running(engine, server, hog_id)
    time.sleep(2)  # it opens its 128 instances in milliseconds
    probe = """
        import ctypes, errno
        libc = ctypes.CDLL(None, use_errno=True)
        print("ok" if libc.inotify_init1(0) >= 0 else errno.errorcode[ctypes.get_errno()])
    """
    assert run(server, probe)["stdout"] == "ok\n"
    result = held.result(timeout=60)
    assert result["timed_out"] and result["stdout"] == "128\n"


@FRESH_AND_POOLED
def test_what_a_run_printed_before_its_timeout_is_kept(server):
    # Before: stdout was a pipe, so Python buffered it, and the kill at the deadline lost it.
    result = run(server, "print('before')\nwhile True:\n    pass", timeout=3)
    assert result["timed_out"] is True and result["stdout"] == "before\n"


@FRESH_AND_POOLED
def test_the_host_kernel_is_masked_from_view(server, runtime):
    # Before: the host kernel's command line, build options and type information, and host-wide
    # load and pressure counters, were all readable.
    code = """
        import errno, json, os
        out = {}
        for path in ["/proc/cmdline", "/proc/config.gz", "/proc/loadavg", "/sys/kernel/vmcoreinfo"]:
            try:
                out[path] = len(open(path, "rb").read())
            except OSError as exc:
                out[path] = errno.errorcode[exc.errno]
        for path in ["/sys/kernel/btf", "/proc/pressure"]:
            out[path] = os.listdir(path) if os.path.isdir(path) else "missing"
        print(json.dumps(out))
    """
    out = printed(run(server, code))
    if runtime != "runc":
        # gVisor shows its own kernel: no build options, type information or pressure files,
        # and a command line and load of its own, not the host's.
        host_cmdline = Path("/proc/cmdline").read_text()
        read = "import json; print(json.dumps(open('/proc/cmdline').read()))"
        sandbox_cmdline = printed(run(server, read))
        assert sandbox_cmdline != host_cmdline
        assert {k: out[k] for k in out if k not in ("/proc/cmdline", "/proc/loadavg")} == {
            "/proc/config.gz": "ENOENT",
            "/sys/kernel/vmcoreinfo": "ENOENT",
            "/sys/kernel/btf": "missing",
            "/proc/pressure": "missing",
        }
        return
    assert out == {
        "/proc/cmdline": 0,
        "/proc/config.gz": 0,
        "/proc/loadavg": 0,
        "/sys/kernel/vmcoreinfo": 0,
        "/sys/kernel/btf": [],
        "/proc/pressure": [],
    }


# --- the runner itself: missing pieces are clear errors, and leftovers are swept ---------------


def test_a_missing_image_is_a_clear_error(server):
    runner = SandboxRunner(SandboxConfig(image="agent-sandbox:no-such-tag", owner=server.owner))
    with pytest.raises(SandboxUnavailable, match="image agent-sandbox:no-such-tag is missing"):
        runner.run("print(1)")
    runner.close()


def test_a_runtime_the_daemon_lacks_is_a_clear_error(server):
    runner = SandboxRunner(SandboxConfig(runtime="no-such-runtime", owner=server.owner))
    with pytest.raises(SandboxUnavailable, match="offers no 'no-such-runtime' runtime"):
        runner.run("print(1)")
    runner.close()


def test_gvisor_runs_the_sandbox_when_the_daemon_offers_runsc(server, engine):
    runtimes = sorted(engine.info().get("Runtimes", {}))
    if "runsc" not in runtimes:
        pytest.skip(
            f"the Docker daemon offers no runsc runtime (it has {', '.join(runtimes)}); "
            "docs/04-sandboxed-tools.md shows how to enable gVisor"
        )
    runner = SandboxRunner(SandboxConfig(runtime="runsc", owner=server.owner))
    try:
        result = runner.run("import platform; print(platform.release())")
    finally:
        runner.close()
    assert result.exit_code == 0 and result.stdout.strip()  # gVisor's own kernel answers


def test_sweep_removes_expired_leftovers_and_keeps_live_containers(server, engine, monkeypatch):
    """Every sweeper on the engine removes any owner's expired sandboxes, and other checks' run
    beside this one: when one of them took the leftover first, the round is tried again (at most
    five), until this sweeper is seen removing it."""
    owner = f"{server.owner}-sweep"
    labels = {f"{LABEL}.owner": owner}
    live = engine.containers.create(
        "agent-sandbox:python", labels={**labels, f"{LABEL}.expires": str(int(time.time()) + 600)}
    )
    removed_here = []
    monkeypatch.setattr(sweep, "remove", lambda c: removed_here.append(c.id) or remove(c))
    runner = SandboxRunner(SandboxConfig(owner=owner))
    try:
        for _ in range(5):
            expired = engine.containers.create(
                "agent-sandbox:python", labels={**labels, f"{LABEL}.expires": "0"}
            )
            Sweeper(runner).sweep()  # and any other service's expired leftovers
            # Gone, whoever removed it; the live one kept.
            assert [c.id for c in containers(engine, owner)] == [live.id]
            if expired.id in removed_here:
                break
        assert expired.id in removed_here, "another sweeper took the leftover five times"
    finally:
        live.remove(force=True)
        runner.close()


def test_no_container_of_this_suite_is_left(server, engine):
    assert containers(engine, server.owner) == []
    assert containers(engine, f"{server.owner}-sweep") == []
