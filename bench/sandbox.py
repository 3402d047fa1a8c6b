"""What a sandboxed run costs (`make bench-sandbox`): the runner, fresh and pooled, against a bare
`docker run --rm`; then gVisor against runc, and the egress proxy against no proxy
(bench/sandbox_isolation.py).

Every strategy runs the same program with the same restrictions
(research-agent/research_agent/sandbox.py):

  bare     `docker run --rm -i` with the runner's flags, the program on stdin: the baseline
  fresh    QueuedRunner.arun, no pool: create, attach, start, send, read; the engine removes it
  pooled   QueuedRunner.arun with a ContainerPool of its own (pool_size): a run takes a container
           started ahead (else a fresh one), sends, reads, removes it; the pool refills in the
           background, in this process, on the clock: it competes for the same cores
  exec     one long-lived container, every call a `docker exec` in it: shared state between runs
           (sequential and concurrent modes only, for comparison; never for untrusted code)

Modes: sequential (N calls one after another, strategies interleaved call by call), concurrent
(N calls, C at a time) and sustained (calls started at a steady RATE per second for DURATION s,
one strategy after another; a call's time counts from when it was due, so calls that pile up
behind slow ones count as slow). It prints p50/p95 per call and each p50 against bare's, and what
an idle pooled container holds (`docker stats --no-stream`).

Usage: python -m bench.sandbox [-n 20] [-c 4] [--rate 2] [--duration 60] [--pool 2]
                                       [--modes sequential,concurrent,sustained]
"""

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

from bench import results as bench_results
from bench import sandbox_isolation  # noqa: E402
from research_agent import (  # noqa: E402
    LABEL,
    POOL_REQUEST_ID,
    ContainerPool,
    QueuedRunner,  # noqa: E402
    SandboxConfig,
    SandboxRunner,
    remove_sandbox,
)

CODE = "print(sum(range(1000)))"
EXPECTED = "499500\n"
ISOLATION = {
    "bare": "baseline: a fresh container per run",
    "fresh": "the same: a fresh container per run",
    "pooled": "the same: each container serves one run; idle ones hold memory",
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
        "--label", f"{LABEL}.owner={c.owner}",
        # An expiry, like the runner's: a sweep removes a labelled container without one.
        "--label", f"{LABEL}.expires={int(time.time()) + 3600}", c.image, "python", "-I", "-",
    ]  # fmt: skip


class Strategies:
    def __init__(self, owner: str, pool_size: int, concurrency: int):
        config = dict(owner=owner, max_concurrent=max(concurrency, pool_size), max_queued=10_000)
        runner = SandboxRunner(SandboxConfig(**config))
        self.fresh_runner = QueuedRunner(runner)
        pooled = SandboxRunner(SandboxConfig(**config, pool_size=pool_size))
        # It counts the runs it served (served_by_pool): how often it was empty.
        self.pool = ContainerPool(pooled)
        self.pooled_runner = QueuedRunner(pooled, pool=self.pool)
        self.command = bare_command(runner.config)
        # exec: one container whose watchdog waits for a run that never comes; `docker exec`
        # starts a second Python next to it for each call.
        self.shared = runner.create(3600, "bench-exec", runner.take_uid(), idle=3600)
        self.shared.start()
        self.shared.exec_run(["python", "-c", "pass"])  # ready to exec

    async def bare(self) -> str:
        process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await process.communicate(CODE.encode())
        if process.returncode:
            raise RuntimeError(f"docker run exited {process.returncode}: {stderr.decode()!r}")
        return stdout.decode()

    async def fresh(self) -> str:
        return (await self.fresh_runner.arun(CODE, request_id="bench-fresh")).stdout

    async def pooled(self) -> str:
        return (await self.pooled_runner.arun(CODE, request_id="bench-pooled")).stdout

    async def exec(self) -> str:
        result = await asyncio.to_thread(self.shared.exec_run, ["python", "-I", "-c", CODE])
        return result.output.decode()

    def close(self) -> None:
        remove_sandbox(self.shared)
        self.fresh_runner.close()
        self.pooled_runner.close()  # removes the pool's idle containers


FAILURES: list[str] = []


async def timed(call, due: float | None = None) -> float | None:
    """The call's time in ms, or None if it failed (counted and shown, never hidden)."""
    start = time.perf_counter() if due is None else due
    try:
        output = await call()
        if output != EXPECTED:
            raise RuntimeError(f"unexpected output {output!r}")
    except Exception as exc:  # noqa: BLE001 - a failed call is a result of the benchmark
        FAILURES.append(f"{call.__name__}: {exc}")
        return None
    return (time.perf_counter() - start) * 1000


async def sustained(call, rate: float, duration: float) -> list[float]:
    """Start a call every 1/rate s for `duration` s, whether the previous ones finished or not."""
    begin, calls = time.perf_counter(), []
    for i in range(round(rate * duration)):
        due = begin + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        calls.append(asyncio.create_task(timed(call, due)))
    return list(await asyncio.gather(*calls))


async def wait_for_pool(runner: ContainerPool, size: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while runner.idle_count < size:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not fill to {size} within {within:g} s")
        await asyncio.sleep(0.1)


def idle_cost(owner: str) -> list[str]:
    """`docker stats --no-stream` of the idle pooled containers: memory and CPU each."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={LABEL}.owner={owner}",
         "--filter", f"label={LABEL}.request-id={POOL_REQUEST_ID}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if not ids:
        return []
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}} {{.CPUPerc}}", *ids],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return stats.stdout.splitlines()


async def bench(args, owner: str) -> tuple[dict, list[str], dict]:
    modes = args.modes.split(",")
    strategies = Strategies(owner, args.pool, args.c)
    calls = {
        "bare": strategies.bare,
        "fresh": strategies.fresh,
        "pooled": strategies.pooled,
        "exec": strategies.exec,
    }
    samples, served = {}, {}
    try:
        strategies.pool.start()
        await wait_for_pool(strategies.pool, args.pool)
        await asyncio.sleep(5)  # idle: what a waiting container costs, once it has settled
        stats = await asyncio.to_thread(idle_cost, owner)
        for call in calls.values():  # warm-up: images and code paths in the page cache
            await call()
        for mode in modes:
            before = strategies.pool.served_by_pool
            if mode == "sequential":
                for name in calls:
                    samples[name, mode] = []
                for _ in range(args.n):  # interleaved: every strategy sees the same machine
                    for name, call in calls.items():
                        samples[name, mode].append(await timed(call))
            elif mode == "concurrent":
                for name, call in calls.items():
                    limit = asyncio.Semaphore(args.c)

                    async def one(call=call, limit=limit) -> float:
                        async with limit:
                            return await timed(call)

                    samples[name, mode] = list(
                        await asyncio.gather(*[one() for _ in range(args.n)])
                    )
            elif mode == "sustained":
                for name in ("bare", "fresh", "pooled"):
                    if name == "pooled":  # the pool starts full, as in a service that was idle
                        await wait_for_pool(strategies.pool, args.pool)
                        before = strategies.pool.served_by_pool
                    load = os.getloadavg()[0]
                    samples[name, mode] = await sustained(calls[name], args.rate, args.duration)
                    print(f"# sustained {name}: load {load:.1f} -> {os.getloadavg()[0]:.1f}")
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            pooled_calls = len(samples.get(("pooled", mode), []))
            served[mode] = (strategies.pool.served_by_pool - before, pooled_calls)
            if mode == "sequential":
                await wait_for_pool(strategies.pool, args.pool)
    finally:
        await asyncio.to_thread(strategies.close)
    return samples, stats, served


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="calls per strategy and mode")
    parser.add_argument("-c", type=int, default=4, help="concurrent calls in the concurrent mode")
    parser.add_argument("--rate", type=float, default=2.0, help="calls per second, sustained mode")
    parser.add_argument("--duration", type=float, default=60.0, help="s per strategy, sustained")
    parser.add_argument("--pool", type=int, default=2, help="the pooled runner's pool_size")
    parser.add_argument("--modes", default="sequential,concurrent,sustained")
    parser.add_argument("--runtime-n", type=int, default=20, help="runs per runtime and kind")
    parser.add_argument("--egress-n", type=int, default=5, help="16 MB downloads per path")
    args = parser.parse_args()
    results_file = bench_results.start("sandbox", vars(args))

    owner = f"bench-{uuid.uuid4().hex[:8]}"
    probe = SandboxRunner(SandboxConfig(owner=owner))
    info = probe.client.info()
    probe.close()
    print(f"# make bench-sandbox, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs, {info['MemTotal'] / 2**30:.0f} GiB, "
        f"Docker {info['ServerVersion']}, {info['Driver']}, cgroup v{info.get('CgroupVersion')}, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"# program: {CODE!r}; n={args.n} per strategy (sequential, concurrent {args.c} at a "
        f"time); sustained: {args.rate:g}/s for {args.duration:g} s per strategy; pool {args.pool}"
    )
    print(f"# bare: {' '.join(bare_command(SandboxConfig(owner=owner)))}")

    samples, stats, served = asyncio.run(bench(args, owner))
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}.owner={owner}"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip

    print("# idle pooled containers (docker stats --no-stream: id, memory, CPU):")
    for line in stats:
        print(f"#   {line}")
    print()
    print(
        "| strategy | mode | p50 ms | p95 ms | p50 / bare p50 | failed | served by the pool "
        "| isolation |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | --- | --- |")
    for mode in args.modes.split(","):
        bare_p50 = statistics.median(t for t in samples["bare", mode] if t is not None)
        for name in ("bare", "fresh", "pooled", "exec"):
            if (name, mode) not in samples:
                continue
            data = [t for t in samples[name, mode] if t is not None]
            p50 = statistics.median(data)
            pool = f"{served[mode][0]} of {served[mode][1]}" if name == "pooled" else ""
            print(
                f"| {name} | {mode} | {p50:.0f} | {bench_results.percentile(data, 95):.0f} | "
                f"{p50 / bare_p50:.2f}x | {len(samples[name, mode]) - len(data)} | {pool} | "
                f"{ISOLATION[name]} |"
            )
    # Lesson 04's Going further: gVisor against runc, and the egress proxy against no proxy.
    registered = set(info.get("Runtimes", {}))
    print(f"\n# runtimes: {args.runtime_n} sequential runs each, interleaved; daemon has "
          f"{', '.join(sorted(registered))}")  # fmt: skip
    print("\n".join(asyncio.run(sandbox_isolation.runtimes(owner, args.runtime_n, registered))))
    print(f"\n# egress: {args.egress_n} downloads of 16 MB per path, interleaved, after one each")
    print("\n".join(asyncio.run(sandbox_isolation.egress_throughput(owner, args.egress_n))))
    for failure in sorted(set(FAILURES)):
        print(f"Failed: {failure}")
    left += [""] * sandbox_isolation.leftovers(owner)
    print(f"\nContainers left with label {LABEL}.owner={owner}: {len(left)}")
    results_file.write()
    return 1 if left or FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
