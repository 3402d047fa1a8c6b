"""Each pooled container serves one run, in a burst as one at a time: nothing a run leaves behind
(a file in /tmp, a process left running, an environment variable) is seen by any other run.

Marker `container`. Every run of the same program first looks for what earlier runs left, then
leaves its own marks. The check is shown to catch a pool that hands one container to two runs:
against `OneContainerForEveryRun` (each run a `docker exec` in one container started ahead, what a
pool that reused its containers would do) it finds the files and the processes. An environment
variable would carry over only where one interpreter served two runs; the program checks for it
all the same. Nothing here is timed.
"""

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from research_agent.sandbox.pool import ContainerPool
from research_agent.sandbox.runner import SandboxConfig, SandboxRunner, remove
from support.waiting import wait_for
from tests.support.sandbox_api import containers

pytestmark = pytest.mark.container

# Looks for the marks of other runs, then leaves its own: a file, a process, a variable.
MARKS = """
import json, os, subprocess, sys
processes = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            processes.append(open(f"/proc/{pid}/cmdline", "rb").read().decode())
        except OSError:
            pass
seen = {
    "files": sorted(name for name in os.listdir("/tmp") if name.startswith("mark-")),
    "processes": sorted(line for line in processes if "left-by-run" in line),
    "variables": sorted(name for name in os.environ if name.startswith("MARK_")),
}
open("/tmp/mark-RUN", "w").write("left by run RUN")
os.environ["MARK_RUN"] = "RUN"
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # left-by-run RUN"],
                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
print(json.dumps(seen))
"""
RUNS, AT_ONCE = 8, 4


def seen_by_each(run, at_once: int) -> list[dict]:
    """What each of RUNS runs of MARKS saw of the others, `at_once` of them at a time."""

    def one(i: int) -> dict:
        result = run(MARKS.replace("RUN", str(i)))
        assert result.exit_code == 0, result
        return json.loads(result.stdout)

    with ThreadPoolExecutor(at_once) as threads:
        return list(threads.map(one, range(RUNS)))


def leaks(seen: list[dict]) -> set[str]:
    """The kinds of marks any run saw: none where each container serves one run."""
    return {kind for marks in seen for kind, found in marks.items() if found}


class OneContainerForEveryRun:
    """A pool that breaks the rule, for the check's own test: every run is a `docker exec` of the
    program in the same container, started ahead like a pooled one."""

    def __init__(self, runner: SandboxRunner):
        self.runner, self.uid = runner, runner.take_uid()
        self.container = runner.create(60, "reused", self.uid, idle=120)
        self.container.start()

    def run(self, code: str):
        """The program's exit code, and what it printed. The daemon can drop a short exec's
        output (exit 0, nothing printed: docker/docker-py#2042), so the program prints into a
        file that is then read: a read, unlike a run, may be done again when it comes back empty."""
        printed = f"/tmp/printed-{uuid.uuid4().hex}"
        into_file = (
            f"import contextlib\nwith open({printed!r}, 'w') as out, "
            f"contextlib.redirect_stdout(out):\n    exec({code!r})\n"
        )
        exit_code, _ = self.container.exec_run(["python", "-I", "-c", into_file])
        read = ["python", "-I", "-c", f"print(open({printed!r}).read(), end='')"]
        for _ in range(3):
            stdout = self.container.exec_run(read, stderr=False).output
            if stdout:
                break
        return type("Result", (), {"exit_code": exit_code, "stdout": stdout.decode()})

    def close(self) -> None:
        remove(self.container)
        self.runner.free_uid(self.uid)


@pytest.fixture
def runner():
    owner = f"test-isolation-{uuid.uuid4().hex[:8]}"
    config = SandboxConfig(owner=owner, pool_size=2, pool_max=RUNS, max_concurrent=12)
    runner = SandboxRunner(config)
    yield runner
    runner.close()


@pytest.mark.parametrize("at_once", [1, AT_ONCE], ids=["one at a time", "a burst"])
def test_no_run_sees_what_another_left(runner, engine, at_once):
    pool = ContainerPool(runner)
    try:
        pool.start()
        wait_for(lambda: pool.idle_count >= 2, timeout=60, what="a full pool")
        seen = seen_by_each(pool.run, at_once)
        assert leaks(seen) == set(), seen
        assert pool.served["warm", "pooled"] >= 2  # the pool's containers served runs too
    finally:
        pool.close()
    wait_for(lambda: not containers(engine, runner.config.owner), timeout=30, what="no container")


@pytest.mark.parametrize("at_once", [1, AT_ONCE], ids=["one at a time", "a burst"])
def test_the_check_catches_a_container_that_serves_two_runs(runner, engine, at_once):
    reused = OneContainerForEveryRun(runner)
    try:
        seen = seen_by_each(reused.run, at_once)
    finally:
        reused.close()
    assert {"files", "processes"} <= leaks(seen), seen
