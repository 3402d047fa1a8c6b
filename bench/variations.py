"""Benchmark lesson 05: N = 1, 2, 4, 8 variations in cold containers, on warm workers, and the same
work in one process.

    make bench-variations          (REPEAT=3 for the median of three runs per row)

Containers: scripts/lesson-05.sh starts Redis and a network under a name of its own, the lesson's
API runs as a process, each run is POSTed and its event stream read to `run_done`. Per run: the wall
time (POST to run_done), each variation's time to first token, and where the time went: creating
and starting the container (`container_started.start_ms`), the worker's Python start-up and imports
(`worker_ready.startup_ms`, measured inside the container from process start), and the model (first
token to final). Peak memory is each container's cgroup peak (`worker_stats`).

Warm workers: a second API with WARM_WORKERS=8; before each run the benchmark waits until all 8
are started and imported (their ready keys in Redis), so a run measures the pool and not the
refill after the previous run. A warm worker's start-up counts from its job's arrival.

In one process: a fresh `python` imports the agent once, builds N agents and streams N answers
concurrently with asyncio (the same offline model, settings and token delay), and reports the same
figures. Everything else on the machine keeps running: numbers are for this machine at this time.
"""

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench import deadline
from bench import results as bench_results
from support.ports import free_port
from support.server import ServerProcess, offline_environment

ROOT = Path(__file__).resolve().parents[1]
QUERY = "How do I stop a container without losing requests?"
SIZES = [1, 2, 4, 8]
TOKEN_DELAY_MS = int(os.environ.get("OFFLINE_TOKEN_DELAY_MS", "40"))  # the lesson's default


# --- In one process (run as a child: `python -m bench.variations --in-process N`) -------------


def in_process(count: int) -> dict:
    started = time.perf_counter()
    # The presets alone (code/lesson05/presets.py, which imports no lesson), not the lesson.
    from lesson05.presets import PRESETS as presets
    from research_agent import (
        ANSWER_STYLES,
        SYSTEM_PROMPT,
        OfflineResearchModel,
        ResearchAgent,
        Settings,
    )

    imported = time.perf_counter()
    no_docs = tempfile.mkdtemp()  # like the image: search the bundled notes only
    agents = []
    for preset in presets[:count]:
        settings = Settings(DOCS_DIR=no_docs, SEARCH_MAX_RESULTS=preset.search_depth)
        model = OfflineResearchModel(
            token_delay_ms=TOKEN_DELAY_MS, style=preset.style, temperature=preset.temperature
        )
        prompt = f"{SYSTEM_PROMPT}\n{ANSWER_STYLES[preset.style]}"
        agents.append(ResearchAgent(settings, model=model, system_prompt=prompt))
    ready = time.perf_counter()

    async def one(agent) -> dict:
        first = None
        async for name, _ in agent.stream(QUERY):
            if name == "token" and first is None:
                first = time.perf_counter()
        return {"first_token_s": first - started, "done_s": time.perf_counter() - started}

    async def all_of_them():
        return await asyncio.gather(*(one(a) for a in agents))

    results = asyncio.run(all_of_them())
    import resource

    return {
        "wall_s": time.perf_counter() - started,
        "import_s": imported - started,
        "startup_s": ready - started,
        "first_token_s": [r["first_token_s"] for r in results],
        "done_s": [r["done_s"] for r in results],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_in_process(count: int) -> dict:
    began = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "bench.variations", "--in-process", str(count)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"in-process run failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - began  # includes the interpreter's own start
    return result


# --- In containers, through the lesson's API ------------------------------------------------------


def run_containers(url: str, count: int) -> dict:
    import httpx
    from httpx_sse import connect_sse

    began = time.perf_counter()
    response = httpx.post(f"{url}/v1/runs", json={"query": QUERY, "variations": count}, timeout=60)
    response.raise_for_status()
    run_id, token = response.json()["run_id"], response.json()["owner_token"]
    first, start_ms, startup_ms, peak, done, statuses = {}, {}, {}, {}, {}, {}
    with (
        httpx.Client(
            base_url=url, timeout=300, headers={"Authorization": f"Bearer {token}"}
        ) as client,
        connect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source,
    ):
        for sse in source.iter_sse():
            if not sse.data:
                continue
            now, data = time.perf_counter() - began, json.loads(sse.data)
            v = data.get("variation")
            if sse.event == "token":
                first.setdefault(v, now)
            elif sse.event == "container_started":
                start_ms[v] = data["start_ms"]
            elif sse.event == "worker_ready":
                startup_ms[v] = data["startup_ms"]
            elif sse.event == "worker_stats":
                peak[v] = data.get("cgroup_peak_mb", data["process_peak_mb"])
            elif sse.event == "final":
                done[v] = now
            elif sse.event == "variation_done":
                statuses[v] = data["status"]
            elif sse.event == "run_done":
                wall = now
                break
    if set(statuses.values()) != {"succeeded"}:
        raise SystemExit(f"run {run_id} did not succeed: {statuses}")
    return {
        "wall_s": wall,
        "first_token_s": list(first.values()),
        "done_s": list(done.values()),
        "model_s": [done[v] - first[v] for v in done],
        "start_ms": list(start_ms.values()),
        "startup_ms": list(startup_ms.values()),
        "peak_mb": list(peak.values()),
    }


class Stack:
    def __init__(self, warm: int = 0):
        self.warm = warm
        self.env = {**os.environ, "NAME": f"l05bench-{uuid.uuid4().hex[:6]}"}
        up = subprocess.run(
            [ROOT / "scripts" / "lesson-05.sh", "up"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if up.returncode:
            raise SystemExit(up.stderr)
        values = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
        port = free_port()
        env = offline_environment(
            **values,
            PORT=port,
            OFFLINE_TOKEN_DELAY_MS=TOKEN_DELAY_MS,
            WORKER_IMAGE=os.environ.get("WORKER_IMAGE", "research-agent:lesson-05"),
            MAX_ACTIVE_RUNS=1,
            WARM_WORKERS=warm,
        )
        self.redis_url, self.deployment = values["REDIS_URL"], values["DEPLOYMENT"]
        self.api = ServerProcess(
            [sys.executable, "-m", "lesson05.variations_api"], cwd=ROOT, env=env, port=port,
            ready_timeout=60,
        ).start()  # fmt: skip
        self.url = self.api.url

    def wait_until_warm(self) -> None:
        """Every warm worker started and imported (its ready key set): a run then measures the
        pool, not the refill after the previous run, which competes for the same cores."""
        import redis

        from research_agent import warm_queue_key, warm_ready_key

        client = redis.Redis.from_url(self.redis_url)
        pattern = warm_ready_key(warm_queue_key(self.deployment, "*"))
        deadline = time.monotonic() + 300
        while len(list(client.scan_iter(pattern))) < self.warm:
            if time.monotonic() > deadline:
                raise SystemExit(f"{self.warm} warm workers not ready within 300 s")
            time.sleep(0.5)
        client.close()

    def idle_warm_workers(self) -> list[str]:
        """`docker stats` of the idle warm workers: what the pool costs while it waits."""
        labels = [f"label=ai-course.deployment={self.deployment}", "label=ai-course.warm"]
        filters = [arg for label in labels for arg in ("--filter", label)]
        ids = subprocess.run(
            ["docker", "ps", "-q", *filters], capture_output=True, text=True, timeout=60
        ).stdout.split()
        if not ids:
            return ["(none running)"]
        stats = subprocess.run(
            ["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}} {{.CPUPerc}}"]
            + ids,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return stats.stdout.splitlines()

    def close(self):
        self.api.stop(grace=30)
        subprocess.run(
            [ROOT / "scripts" / "lesson-05.sh", "down"],
            env=self.env,
            capture_output=True,
            timeout=600,
        )


# --- The table ------------------------------------------------------------------------------------


def median_run(runs: list[dict]) -> dict:
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def span(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--in-process", type=int)
    args = parser.parse_args()
    if args.in_process:
        print(json.dumps(in_process(args.in_process)))
        return
    repeat = int(os.environ.get("REPEAT", "1"))
    settings = {"REPEAT": repeat, "OFFLINE_TOKEN_DELAY_MS": TOKEN_DELAY_MS, "sizes": SIZES}
    results_file = bench_results.start("variations", settings)
    docker_version = subprocess.run(
        ["docker", "version", "--format", "{{.Server.Version}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    print(
        f"bench-variations {datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()} cores · "
        f"{platform.machine()} · Docker {docker_version} · offline model, "
        f"{TOKEN_DELAY_MS} ms per token · median of {repeat} · load average "
        f"{os.getloadavg()[0]:.1f} at start"
    )
    cold, warm = {}, {}
    stack = Stack()
    try:
        run_containers(stack.url, 1)  # warm-up: page cache and the engine, not counted
        run_in_process(1)  # the same for the host's virtualenv
        for n in SIZES:
            cold[n] = median_run([run_containers(stack.url, n) for _ in range(repeat)])
            print(f"  N={n}: cold containers {cold[n]['wall_s']:.1f} s")
    finally:
        stack.close()
    stack = Stack(warm=max(SIZES))  # a warm worker for every variation of the largest run
    try:
        stack.wait_until_warm()
        time.sleep(5)  # CPU settles after the imports
        print("# idle warm workers (docker stats --no-stream: name, memory, CPU):")
        for line in stack.idle_warm_workers():
            print(f"#   {line}")
        for n in SIZES:
            runs = []
            for _ in range(repeat):
                stack.wait_until_warm()
                runs.append(run_containers(stack.url, n))
            warm[n] = median_run(runs)
            print(f"  N={n}: warm workers {warm[n]['wall_s']:.1f} s")
    finally:
        stack.close()
    rows = []
    for n in SIZES:
        p = median_run([run_in_process(n) for _ in range(repeat)])
        rows.append((n, cold[n], warm[n], p))
        print(f"  N={n}: one process {p['wall_s']:.1f} s")
    base_c, base_w, base_p = (rows[0][i]["wall_s"] for i in (1, 2, 3))
    print()
    print(
        "| N | cold containers: wall s (× N=1) | first token s | container start ms"
        " | worker start-up s | model s | peak MB per container | warm workers: wall s (× N=1)"
        " | first token s | worker start-up s | one process: wall s (× N=1) | first token s"
        " | import + agents s | peak MB |"
    )
    print("| --- " * 14 + "|")
    for n, c, w, p in rows:
        print(
            f"| {n} | {c['wall_s']:.1f} ({c['wall_s'] / base_c:.2f}×) | {span(c['first_token_s'])}"
            f" | {statistics.mean(c['start_ms']):.0f} | {span([s / 1000 for s in c['startup_ms']])}"
            f" | {span(c['model_s'])} | {max(c['peak_mb']):.0f}"
            f" | {w['wall_s']:.1f} ({w['wall_s'] / base_w:.2f}×) | {span(w['first_token_s'])}"
            f" | {span([s / 1000 for s in w['startup_ms']])}"
            f" | {p['wall_s']:.1f} ({p['wall_s'] / base_p:.2f}×) | {span(p['first_token_s'])}"
            f" | {p['startup_s']:.1f} | {p['peak_mb']:.0f} |"
        )
    ratio = rows[2][1]["wall_s"] / base_c
    verdict = "met" if ratio <= 1.6 else "NOT met"
    print(f"\nTarget N=4 within 1.6× N=1 (cold containers): {ratio:.2f}× — {verdict}")
    ratio = rows[2][2]["wall_s"] / base_w
    verdict = "met" if ratio <= 1.25 else "NOT met"
    print(f"Target N=4 within 1.25× N=1 (warm workers): {ratio:.2f}× — {verdict}")
    first = max(rows[2][2]["first_token_s"])
    verdict = "met" if first <= 1.5 else "NOT met"
    print(
        f"Target first token of every variation within 1.5 s at N=4 (warm): {first:.2f} s"
        f" — {verdict}"
    )
    print(f"Load average at the end: {os.getloadavg()[0]:.1f} (other work on this machine)")
    results_file.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
