"""What a sandboxed run costs (`make bench-sandbox`): the runner, fresh and pooled, against a bare
`docker run --rm` measured in the same run, under runc and (side by side, when the daemon has it)
gVisor's runsc; then gVisor against runc, and the egress proxy against no proxy
(bench/sandbox_isolation.py).

Every strategy runs the same program with the same restrictions
(research-agent/research_agent/sandbox/runner.py):

  bare     `docker run --rm -i` with the runner's flags, the program on stdin: the baseline
  fresh    QueuedRunner.arun, no pool: create, attach, start, send, read; the engine removes it
  pooled   QueuedRunner.arun with a ContainerPool of its own (--pool to --pool-max, within
           --budget MiB of idle containers): a run takes a container started ahead (else a fresh
           one), sends, reads, and its container is removed after the answer; the pool refills in
           the background, in this process, on the clock: it competes for the same cores
  exec     one long-lived container, every call a `docker exec` in it: shared state between runs
           (sequential and concurrent modes only, for comparison; never for untrusted code)

Modes: sequential (N calls one after another, strategies interleaved call by call), concurrent
(a burst: N calls, C at a time) and sustained (calls started at a steady RATE per second for
DURATION s, one strategy after another; a call's time counts from when it was due, so calls that
pile up behind slow ones count as slow). Every run has a deadline (--deadline s): a run past it
counts as failed, and a bare run's container is removed by its name; SIGTERM or Ctrl+C removes
every container of the benchmark's owner label before it exits (bench/deadline.py).

It prints p50/p95/p99 per call, each p50 against bare's, how many pooled runs were served warm,
and the issue's targets beside the rows they concern:

  sequential  pooled p50 <= 40 ms and <= 0.15x bare
  concurrent  pooled p50 <= 0.35x bare, at least 18 of 20 served warm
  sustained   pooled: no failure, p99 <= 3x p50, the idle pool's memory within --budget

Usage: python -m bench.sandbox [-n 20] [-c 4] [--rate 4] [--duration 60] [--pool 2]
                               [--pool-max 20] [--budget 384] [--runtimes runc,runsc]
                               [--modes sequential,concurrent,sustained] [--deadline 120]
"""

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import time
import uuid
from datetime import UTC, datetime

from bench import deadline, sandbox_isolation
from bench import results as bench_results
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


def bare_command(c: SandboxConfig, name: str | None = None) -> list[str]:
    """`docker run` with the flags SandboxRunner gives each container (and a name, by which a run
    past its deadline is removed)."""
    runtime = ["--runtime", c.runtime] if c.runtime else []
    named = ["--name", name] if name else []
    return [
        "docker", "run", "--rm", "-i", *named, *runtime, "--network", "none", "--read-only",
        "--tmpfs", f"/tmp:rw,noexec,nosuid,nodev,size={c.tmp_size}",
        "--memory", c.memory, "--memory-swap", c.memory, "--cpus", str(c.cpus),
        "--pids-limit", str(c.pids_for(c.runtime)), "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--user", "65534:65534", "--init", "--log-driver", "none",
        "--label", f"{LABEL}.owner={c.owner}",
        # An expiry, like the runner's: a sweep removes a labelled container without one.
        "--label", f"{LABEL}.expires={int(time.time()) + 3600}", c.image, "python", "-I", "-",
    ]  # fmt: skip


class Strategies:
    def __init__(self, owner: str, args, runtime: str):
        runtime_name = None if runtime == "runc" else runtime
        config = dict(owner=owner, runtime=runtime_name, max_queued=10_000)
        runner = SandboxRunner(SandboxConfig(**config, max_concurrent=args.c))
        self.fresh_runner = QueuedRunner(runner)
        # Its containers, idle ones included, count toward max_concurrent: room for the pool's
        # largest size beside the C runs of a burst.
        pooled = SandboxRunner(
            SandboxConfig(
                **config,
                max_concurrent=args.c + args.pool_max,
                pool_size=args.pool,
                pool_max=args.pool_max,
                pool_budget_mib=args.budget,
            )
        )
        # It counts the runs it served warm and cold, and why (ContainerPool.served).
        self.pool = ContainerPool(pooled)
        self.pooled_runner = QueuedRunner(pooled, pool=self.pool)
        self.config, self.deadline = runner.config, args.deadline
        # exec: one container whose watchdog waits for a run that never comes; `docker exec`
        # starts a second Python next to it for each call.
        self.shared = runner.create(3600, "bench-exec", runner.take_uid(), idle=3600)
        self.shared.start()
        self.shared.exec_run(["python", "-c", "pass"])  # ready to exec

    async def bare(self) -> str:
        return await bare_run(bare_command, self.config, self.deadline)

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


async def bare_run(command, config: SandboxConfig, seconds: float) -> str:
    """One bare `docker run --rm -i`, named, within its deadline: past it, the client is killed
    and the container removed (deadline.run_container), and the run fails."""
    name = f"{config.owner}-bare-{uuid.uuid4().hex[:8]}"
    code, stdout, stderr = await deadline.run_container(
        command(config, name), name, CODE.encode(), seconds
    )
    if code:
        raise RuntimeError(f"docker run exited {code}: {stderr.decode()!r}")
    return stdout.decode()


FAILURES: list[str] = []
DEADLINE = 120.0  # s for one run, any strategy (--deadline)


async def timed(call, due: float | None = None) -> float | None:
    """The call's time in ms, or None if it failed or ran past DEADLINE (counted and shown,
    never hidden)."""
    start = time.perf_counter() if due is None else due
    try:
        output = await deadline.bounded(call(), DEADLINE, call.__name__)
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


async def wait_for_pool(pool: ContainerPool, within: float = 120) -> None:
    """Until the pool holds what it aims to hold now (its demand of the last 30 s)."""
    deadline = time.monotonic() + within
    while True:
        size = pool.target()
        if pool.idle_count >= size:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool did not fill to {size} within {within:g} s")
        await asyncio.sleep(0.1)


def idle_cost(owner: str) -> list[str]:
    """`docker stats --no-stream` of the idle pooled containers: memory and CPU each."""
    ids = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label={LABEL}.owner={owner}",
         "--filter", f"label={LABEL}.request-id={POOL_REQUEST_ID}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip
    if not ids:
        return []
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}} {{.CPUPerc}}", *ids],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return stats.stdout.splitlines()


async def bench(args, owner: str, runtime: str) -> tuple[dict, list[str], dict, dict]:
    modes = args.modes.split(",")
    strategies = Strategies(owner, args, runtime)
    pool = strategies.pool
    calls = {
        "bare": strategies.bare,
        "fresh": strategies.fresh,
        "pooled": strategies.pooled,
        "exec": strategies.exec,
    }
    samples, served, memory = {}, {}, {}
    try:
        pool.start()
        await wait_for_pool(pool)
        await asyncio.sleep(5)  # idle: what a waiting container costs, once it has settled
        stats = await asyncio.to_thread(idle_cost, owner)
        for call in calls.values():  # warm-up: images and code paths in the page cache
            await deadline.bounded(call(), args.deadline, f"warm-up {call.__name__}")
        for mode in modes:
            await wait_for_pool(pool)  # as a service that has been idle a moment holds it
            before = pool.served_by_pool
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

                    if name == "pooled":
                        before = pool.served_by_pool
                    samples[name, mode] = list(
                        await asyncio.gather(*[one() for _ in range(args.n)])
                    )
            elif mode == "sustained":
                for name in ("bare", "fresh", "pooled"):
                    if name == "pooled":  # the pool as the runs before left it
                        await wait_for_pool(pool)
                        before, pool.most_idle = pool.served_by_pool, pool.idle_count
                    load = os.getloadavg()[0]
                    samples[name, mode] = await sustained(calls[name], args.rate, args.duration)
                    print(
                        f"# {runtime} sustained {name}: load {load:.1f} -> {os.getloadavg()[0]:.1f}"
                    )
                memory[mode] = (pool.most_idle, pool.idle_memory_bytes)
            else:
                raise SystemExit(f"unknown mode {mode!r}")
            pooled_calls = len(samples.get(("pooled", mode), []))
            served[mode] = (pool.served_by_pool - before, pooled_calls)
    finally:
        print(f"# {runtime} pool: {dict(pool.served)}; one idle container "
              f"{(pool.idle_memory_bytes or 0) / 2**20:.1f} MiB")  # fmt: skip
        await asyncio.to_thread(strategies.close)
    return samples, stats, served, memory


def targets(mode: str, p50: float, ratio: float, data: list, failed: int, served, memory, args):
    """The issue's targets for a pooled row, each with its figure and whether it is met."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    if mode == "sequential":
        return f"p50 <= 40 ms: {verdict(p50 <= 40)}; <= 0.15x bare: {verdict(ratio <= 0.15)}"
    if mode == "concurrent":
        warm = served[0] * 20 / max(served[1], 1)
        return f"<= 0.35x bare: {verdict(ratio <= 0.35)}; >= 18/20 warm: {verdict(warm >= 18)}"
    if mode == "sustained":
        p99 = bench_results.percentile(data, 99)
        most, each = memory.get(mode, (0, None))
        held = most * (each or 0) / 2**20
        return (
            f"no failure: {verdict(not failed)}; p99 <= 3x p50: {verdict(p99 <= 3 * p50)}; "
            f"idle pool {held:.0f} MiB ({most} x {(each or 0) / 2**20:.1f}) <= {args.budget:g} "
            f"MiB: {verdict(held <= args.budget)}"
        )
    return ""


def main() -> int:
    global DEADLINE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="calls per strategy and mode")
    parser.add_argument("-c", type=int, default=4, help="concurrent calls in the concurrent mode")
    parser.add_argument("--rate", type=float, default=4.0, help="calls per second, sustained mode")
    parser.add_argument("--duration", type=float, default=60.0, help="s per strategy, sustained")
    parser.add_argument("--pool", type=int, default=2, help="the pool's minimum (pool_size)")
    parser.add_argument("--pool-max", type=int, default=20, help="the pool's maximum (pool_max)")
    parser.add_argument("--budget", type=float, default=384, help="the pool's budget (MiB idle)")
    parser.add_argument("--runtimes", default="runc,runsc", help="each one the daemon has")
    parser.add_argument("--modes", default="sequential,concurrent,sustained")
    parser.add_argument("--runtime-n", type=int, default=20, help="runs per runtime and kind")
    parser.add_argument("--egress-n", type=int, default=5, help="16 MB downloads per path")
    parser.add_argument(
        "--deadline", type=float, default=DEADLINE, help="s per run; past it the run has failed"
    )
    args = parser.parse_args()
    DEADLINE = args.deadline
    results_file = bench_results.start("sandbox", vars(args))

    owner = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        return measure(args, owner, results_file)
    finally:  # also when stopped (SIGTERM, Ctrl+C) or failed: nothing of this owner stays
        for label in (f"{LABEL}.owner={owner}", f"{LABEL}-egress.owner={owner}"):
            deadline.remove_labelled(label)


def measure(args, owner: str, results_file) -> int:
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
        f"time); sustained: {args.rate:g}/s for {args.duration:g} s per strategy; pool "
        f"{args.pool} to {args.pool_max}, within {args.budget:g} MiB idle"
    )
    print(f"# bare: {' '.join(bare_command(SandboxConfig(owner=owner)))}")

    registered = set(info.get("Runtimes", {}))
    runtimes = [r for r in args.runtimes.split(",") if r == "runc" or r in registered]
    for missing in sorted(set(args.runtimes.split(",")) - set(runtimes)):
        print(f"# no {missing} runtime on this daemon (it has {', '.join(sorted(registered))}): "
              "its rows are left out; `make gvisor` registers gVisor's")  # fmt: skip
    measured = {runtime: asyncio.run(bench(args, owner, runtime)) for runtime in runtimes}
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL}.owner={owner}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.split()  # fmt: skip

    for runtime, (_, stats, _, _) in measured.items():
        print(f"# {runtime}: idle pooled containers (docker stats --no-stream: id, memory, CPU):")
        for line in stats:
            print(f"#   {line}")
    print()
    print(
        "| runtime | strategy | mode | p50 ms | p95 ms | p99 ms | p50 / bare p50 | failed "
        "| served warm | target | isolation |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |")
    for mode in args.modes.split(","):
        for runtime, (samples, _, served, memory) in measured.items():
            bare_p50 = statistics.median(t for t in samples["bare", mode] if t is not None)
            for name in ("bare", "fresh", "pooled", "exec"):
                if (name, mode) not in samples:
                    continue
                data = [t for t in samples[name, mode] if t is not None]
                failed = len(samples[name, mode]) - len(data)
                p50 = statistics.median(data)
                pool, target = "", ""
                if name == "pooled":
                    pool = f"{served[mode][0]} of {served[mode][1]}"
                    target = targets(
                        mode, p50, p50 / bare_p50, data, failed, served[mode], memory, args
                    )
                print(
                    f"| {runtime} | {name} | {mode} | {p50:.0f} | "
                    f"{bench_results.percentile(data, 95):.0f} | "
                    f"{bench_results.percentile(data, 99):.0f} | {p50 / bare_p50:.2f}x | "
                    f"{failed} | {pool} | {target} | {ISOLATION[name]} |"
                )
    # Lesson 04's Going further: gVisor against runc, and the egress proxy against no proxy.
    print(f"\n# runtimes: {args.runtime_n} sequential runs each, interleaved; daemon has "
          f"{', '.join(sorted(registered))}")  # fmt: skip
    print(
        "\n".join(
            asyncio.run(
                sandbox_isolation.runtimes(owner, args.runtime_n, registered, args.deadline)
            )
        )
    )
    print(f"\n# egress: {args.egress_n} downloads of 16 MB per path, interleaved, after one each")
    print("\n".join(asyncio.run(sandbox_isolation.egress_throughput(owner, args.egress_n))))
    for failure in sorted(set(FAILURES)):
        print(f"Failed: {failure}")
    left += [""] * sandbox_isolation.leftovers(owner)
    print(f"\nContainers left with label {LABEL}.owner={owner}: {len(left)}")
    results_file.write()
    return 1 if left or FAILURES else 0


if __name__ == "__main__":
    deadline.main_exit(main)
