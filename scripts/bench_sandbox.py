"""What a sandboxed run costs (`make bench-sandbox`): the runner against a bare `docker run --rm`.

Every strategy runs the same program with the same restrictions (research-agent/app/sandbox.py),
in the same run, interleaved call by call so that a busy machine slows them all alike:

  bare     `docker run --rm -i` with the runner's flags, the program on stdin: the baseline
  runner   SandboxRunner.run: create, attach, start, send, read, wait, inspect, remove
  warm     a pool of containers created and started ahead, each used once, then removed: a call
           only sends the code, reads, removes. Refilling the pool is off the clock here
  exec     one long-lived container, every call a `docker exec` in it: shared state between runs

Sequential: N calls one after another. Concurrent: N calls, C at a time. It prints p50/p95 per
call and the ratio of each p50 to bare's, in the same mode.

Usage: python scripts/bench_sandbox.py [-n 20] [-c 4]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from queue import Queue

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "research-agent"))
from app.sandbox import LABEL, SandboxConfig, SandboxRunner, remove  # noqa: E402

CODE = "print(sum(range(1000)))"
EXPECTED = "499500\n"
ISOLATION = {
    "bare": "baseline: a fresh container per run",
    "runner": "the same: a fresh container per run",
    "warm": "the same per run; idle containers wait (memory), a crash leaves them to the sweep",
    "exec": "NONE between runs: files in /tmp, processes, memory shared; never for untrusted code",
}


def bare_command(c: SandboxConfig) -> list[str]:
    """`docker run` with the flags SandboxRunner gives each container."""
    return [
        "docker", "run", "--rm", "-i", "--network", "none", "--read-only",
        "--tmpfs", f"/tmp:rw,noexec,nosuid,nodev,size={c.tmp_size}",
        "--memory", c.memory, "--memory-swap", c.memory, "--cpus", str(c.cpus),
        "--pids-limit", str(c.pids), "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--user", "65534:65534", "--init", "--log-driver", "none",
        "--label", f"{LABEL}.owner={c.owner}", c.image, "python", "-I", "-",
    ]  # fmt: skip


def timed(call: Callable[[], str]) -> float:
    start = time.perf_counter()
    output = call()
    elapsed = (time.perf_counter() - start) * 1000
    if output != EXPECTED:
        raise RuntimeError(f"unexpected output {output!r}")
    return elapsed


class Strategies:
    def __init__(self, runner: SandboxRunner, warm_size: int):
        self.runner, self.config = runner, runner.config
        self.command = bare_command(self.config)
        self.warm: Queue = Queue()
        self.fill(warm_size)
        # exec: one container that idles until removed (the image has no `sleep`: Python does it).
        self.shared = runner._create(3600, "bench-exec")
        self.shared.start()
        self.shared.exec_run(["python", "-c", "pass"])  # ready to exec

    def fill(self, count: int) -> None:
        for _ in range(count):
            container = self.runner._create(self.config.timeout_seconds, "bench-warm")
            container.start()  # Python starts and waits for its program on stdin
            self.warm.put(container)

    def bare(self) -> str:
        return subprocess.run(
            self.command, input=CODE, capture_output=True, text=True, timeout=60, check=True
        ).stdout

    def runner_run(self) -> str:
        return self.runner.run(CODE, request_id="bench-runner").stdout

    def warm_run(self) -> str:
        container = self.warm.get_nowait()
        try:
            return self.runner.execute(
                container, CODE, self.config.timeout_seconds, started=True
            ).stdout
        finally:
            remove(container)

    def exec_run(self) -> str:
        return self.shared.exec_run(["python", "-I", "-c", CODE]).output.decode()

    def close(self) -> None:
        remove(self.shared)
        while not self.warm.empty():
            remove(self.warm.get_nowait())


def percentile(samples: list[float], p: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[p - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="calls per strategy and mode")
    parser.add_argument("-c", type=int, default=4, help="concurrent calls in the concurrent mode")
    args = parser.parse_args()

    owner = f"bench-{uuid.uuid4().hex[:8]}"
    runner = SandboxRunner(SandboxConfig(owner=owner, max_concurrent=args.c))
    info = runner.client.info()
    print(f"# make bench-sandbox, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, {info['MemTotal'] / 2**30:.0f} GiB, "
        f"Docker {info['ServerVersion']}, {info['Driver']}, cgroup v{info.get('CgroupVersion')}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"# program: {CODE!r}; n={args.n} per strategy and mode, concurrency {args.c}")
    print(f"# bare: {' '.join(bare_command(runner.config))}\n")

    strategies = Strategies(runner, warm_size=2 * args.n + 1)
    calls = {
        "bare": strategies.bare,
        "runner": strategies.runner_run,
        "warm": strategies.warm_run,
        "exec": strategies.exec_run,
    }
    for call in calls.values():  # warm-up: images and code paths in the page cache
        call()
    samples = {(name, mode): [] for name in calls for mode in ("sequential", "concurrent")}
    try:
        for _ in range(args.n):  # interleaved: every strategy sees the same machine
            for name, call in calls.items():
                samples[name, "sequential"].append(timed(call))
        for name, call in calls.items():
            with ThreadPoolExecutor(args.c) as pool:
                calls_n = [call] * args.n
                samples[name, "concurrent"] = list(pool.map(timed, calls_n))
    finally:
        strategies.close()
        left = runner.client.containers.list(all=True, filters={"label": f"{LABEL}.owner={owner}"})
        runner.close()

    print("| strategy | mode | p50 ms | p95 ms | p50 / bare p50 | isolation between runs |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for mode in ("sequential", "concurrent"):
        bare_p50 = statistics.median(samples["bare", mode])
        for name in calls:
            data = samples[name, mode]
            p50 = statistics.median(data)
            print(
                f"| {name} | {mode} | {p50:.0f} | {percentile(data, 95):.0f} | "
                f"{p50 / bare_p50:.2f}x | {ISOLATION[name]} |"
            )
    print(f"\nContainers left with label {LABEL}.owner={owner}: {len(left)}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
