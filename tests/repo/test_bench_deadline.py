"""Every benchmark ends by itself (bench/deadline.py): a run past its deadline counts as failed and
its container is removed by name, and a benchmark stopped with SIGTERM runs its own cleanup.
No Docker here: a `docker` stub on PATH records what it is asked and, for `run`, hangs."""

import ast
import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench import deadline

ROOT = Path(__file__).resolve().parents[2]

STUB = """\
#!/bin/sh
echo "$*" >> "{log}"
case "$1" in
  run) exec sleep 60 ;;  # a `docker run` that never answers, as runsc's did
  ps) echo c1; echo c2 ;;
esac
"""


@pytest.fixture
def docker_stub(tmp_path, monkeypatch):
    log = tmp_path / "docker.log"
    stub = tmp_path / "bin" / "docker"
    stub.parent.mkdir()
    stub.write_text(STUB.format(log=log))
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_a_run_past_its_deadline_is_stopped_and_its_container_removed(docker_stub):
    argv = ["docker", "run", "--rm", "-i", "--name", "bench-x-1", "img", "python", "-I", "-"]
    started = time.monotonic()
    with pytest.raises(deadline.RunTimedOut, match="bench-x-1"):
        asyncio.run(deadline.run_container(argv, "bench-x-1", b"print(1)", seconds=0.5))
    assert time.monotonic() - started < 30, "the run did not end at its deadline"
    assert calls(docker_stub)[-1] == "rm -f bench-x-1", calls(docker_stub)


def test_a_run_within_its_deadline_leaves_nothing_to_remove(tmp_path, monkeypatch):
    stub = tmp_path / "docker"
    stub.write_text('#!/bin/sh\necho "$*" >> "$0.log"\ncat\n')
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    argv = ["docker", "run", "--name", "quick", "img"]
    code, out, _ = asyncio.run(deadline.run_container(argv, "quick", b"hi", seconds=30))
    assert (code, out) == (0, b"hi")
    assert calls(tmp_path / "docker.log") == ["run --name quick img"]


def test_the_sandbox_benchmark_counts_a_hung_bare_run_as_failed(docker_stub, monkeypatch):
    from bench import sandbox
    from research_agent import SandboxConfig

    monkeypatch.setattr(sandbox, "DEADLINE", 0.5)
    monkeypatch.setattr(sandbox, "FAILURES", [])

    async def bare():
        return await sandbox.bare_run(sandbox.bare_command, SandboxConfig(owner="bench-t"), 30)

    assert asyncio.run(sandbox.timed(bare)) is None
    assert len(sandbox.FAILURES) == 1 and "deadline" in sandbox.FAILURES[0]
    run, *rest = calls(docker_stub)
    name = run.split("--name ")[1].split()[0]
    assert name.startswith("bench-t-bare-")
    assert rest == [f"rm -f {name}"]


def test_the_owner_sweep_removes_by_label(docker_stub):
    assert deadline.remove_labelled("x.owner=bench-1") == 2
    assert calls(docker_stub) == ["ps -aq --filter label=x.owner=bench-1", "rm -f c1 c2"]


BENCH_LOOP = """\
import asyncio, sys
from pathlib import Path
from bench import deadline

marker = Path(sys.argv[1])

async def one_run():
    await asyncio.sleep(60)  # a run that hangs

async def bench():
    try:
        print("ready", flush=True)
        await asyncio.gather(one_run(), one_run())
    finally:
        marker.write_text("cleaned up")

def main():
    asyncio.run(bench())
    return 0

deadline.main_exit(main)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_benchmark_runs_its_cleanup(tmp_path, signum):
    marker = tmp_path / "marker"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(BENCH_LOOP), str(marker)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline() == "ready\n", process.stderr.read()
        time.sleep(0.2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert marker.read_text() == "cleaned up", stderr
    assert process.returncode == 128 + signum, stderr
    assert "stopped by" in stderr


def unbounded_waits(source: str) -> list[str]:
    """subprocess.run / check_output / check_call, and .wait() / .communicate() of a process,
    called without a timeout (a wait inside asyncio.wait_for or bounded() has its deadline)."""
    tree = ast.parse(source)
    bounded_args = {
        id(arg)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("wait_for", "bounded"))
        for arg in node.args
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in bounded_args:
            continue
        name = ast.unparse(node.func)
        keywords = {k.arg for k in node.keywords}
        if "timeout" in keywords or None in keywords:  # None: **kwargs, which sh() fills
            continue
        if name.endswith(("subprocess.run", "check_output", "check_call")) or (
            name.endswith((".wait", ".communicate")) and not node.args and "." in name
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_check_finds_a_wait_without_a_deadline():
    assert unbounded_waits("subprocess.run(['docker', 'ps'])")
    assert unbounded_waits("process.wait()")
    assert not unbounded_waits("subprocess.run(['docker', 'ps'], timeout=60)")
    assert not unbounded_waits("asyncio.wait_for(process.wait(), 10)")


@pytest.mark.parametrize("path", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_no_benchmark_waits_on_a_command_without_a_deadline(path):
    assert unbounded_waits(path.read_text(encoding="utf-8")) == []
