"""`make bench-scaleout`: the agent on Swarm under load, through a rolling update and a docker stop.

Deploys code/lesson06/swarm/stack.yml as a stack of its own (its own name, a free port, and the
optimized image built from this checkout under tags of its own, so that another build of
research-agent:optimized on the machine cannot change it mid-run), then in one run:

1. Throughput with 1 replica, then with 3, ROUNDS times (1, 3, 1, 3: on a shared machine the load
   from elsewhere drifts, and alternating shows it): wrk keeps CONNECTIONS connections asking
   unique questions (no cache hits) through HAProxy for SECONDS each.
2. A steady load through four phases: RATE questions a second, sent on schedule whether or not the
   previous ones have been answered (open loop, so a stall shows as latency instead of hiding), up
   to MAX_IN_FLIGHT unanswered: a question due past that is held back and counted, so a machine too
   busy for the load shows it as latency and held-back questions instead of piling up work until
   answers meet the agent's 30 s bound; plus STREAMS clients that each keep one SSE stream open
   after another. Phases: `before`; `update` (the service rolls to a new image tag, one replica at
   a time, the new one started first); `stop` (one replica is stopped with `docker stop`, Swarm
   replaces it); `after`.

Counted: requests sent and failed (any non-2xx, connection error or timeout), streams that ended
with `[DONE]` and streams that were cut (no `[DONE]`, or an `error` event), p50/p99 latency per
phase, HAProxy's retries. Prints the tables and exits 1 if a request failed or a stream was cut.

The throughput rounds use wrk (as `make bench-api` does): it is written in C and takes little of
the CPUs the replicas need. The steady load is a small asyncio client instead, because it must count
every request by the phase it was sent in and read each SSE stream to its `[DONE]`, checking for an
`error` event; wrk and hey report one aggregate and cannot read a stream. httpx and httpx-sse do the
HTTP and SSE parts.

Settings (environment): BENCH_RATE (20), BENCH_MAX_IN_FLIGHT (12), BENCH_STREAMS (4),
BENCH_PHASE_SECONDS (15), BENCH_SECONDS (8), BENCH_CONNECTIONS (8), BENCH_ROUNDS (2),
BENCH_TOKEN_DELAY_MS (40: streams of about 6 s), BENCH_KEEP=1 to leave the stack running. Only
loopback; every loop is bounded.
"""

import asyncio
import io
import os
import platform
import re
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import date

import docker
import httpx
from httpx_sse import aconnect_sse

from bench import deadline
from bench import results as bench_results
from scripts import swarm
from support.commands import require_command
from support.ports import free_port

RATE = float(os.getenv("BENCH_RATE", "20"))
# 12 unanswered is 4 a replica: at the quiet machine's ~23 ms an answer, 20 questions/s keep fewer
# than 2 in flight. With 40, a machine whose CPUs other work takes (CI runs `make test` beside this)
# queued so many questions in each replica's event loop that a stream's 150 token events, waiting
# behind them, took past the agent's 30 s bound and were cut with a timeout.
MAX_IN_FLIGHT = int(os.getenv("BENCH_MAX_IN_FLIGHT", "12"))
STREAMS = int(os.getenv("BENCH_STREAMS", "4"))
PHASE_SECONDS = float(os.getenv("BENCH_PHASE_SECONDS", "15"))
SECONDS = float(os.getenv("BENCH_SECONDS", "8"))
ROUNDS = int(os.getenv("BENCH_ROUNDS", "2"))
CONNECTIONS = int(os.getenv("BENCH_CONNECTIONS", "8"))
TOKEN_DELAY_MS = os.getenv("BENCH_TOKEN_DELAY_MS", "40")
# The stack refuses to deploy without API keys (its port is open on every interface): its own.
API_KEY = secrets.token_urlsafe(32)
REQUEST_TIMEOUT = 45.0  # above the agent's REQUEST_TIMEOUT_SECONDS (30): the agent answers first
UPDATE_TIMEOUT = 240.0
PHASES = ("before", "update", "stop", "after")
TOPICS = (
    "Why use a multi-stage Docker build?",
    "How do health checks work?",
    "What does docker stop do to a running server?",
    "Why should a container run as a non-root user?",
    "What is a Docker layer cache?",
    "How does graceful shutdown work?",
)


def question(n: int) -> str:
    # Unique text, so the shared Redis cache never answers: every request runs the agent.
    return f"{TOPICS[n % len(TOPICS)]} ({uuid.uuid4().hex[:8]})"


# --- The load -------------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str  # "request" or "stream"
    phase: str
    seconds: float
    ok: bool
    error: str = ""


async def ask(client: httpx.AsyncClient, n: int) -> tuple[bool, str]:
    try:
        response = await client.post("/v1/research", json={"query": question(n)})
    except httpx.HTTPError as error:
        return False, type(error).__name__
    if response.status_code != 200:
        return False, f"HTTP {response.status_code}: {response.text[:200]}"
    return True, ""


async def stream(client: httpx.AsyncClient, n: int) -> tuple[bool, str]:
    """One SSE stream, read up to `[DONE]`; ok only if it got there without an `error` event."""
    try:
        async with aconnect_sse(
            client, "POST", "/v1/research/stream", json={"query": question(n)}
        ) as source:
            if source.response.status_code != 200:
                return False, f"HTTP {source.response.status_code}"
            error = ""
            async for event in source.aiter_sse():
                if event.event == "error":
                    error = f"error event: {event.data[:200]}"
                if event.data == "[DONE]":
                    # Stop here: waiting for the connection to close would add keep-alive time.
                    return not error, error
    except httpx.HTTPError as error:
        return False, f"cut: {type(error).__name__}"
    return False, "cut: the stream ended without [DONE]"


@dataclass
class Load:
    """Open-loop questions plus back-to-back streams, labelled with the phase they started in."""

    url: str
    rate: float
    streams: int
    max_seconds: float
    max_in_flight: int = MAX_IN_FLIGHT
    phase: str = "before"
    results: list[Result] = field(default_factory=list)
    held_back: dict[str, int] = field(default_factory=dict)  # phase: questions due but not sent
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 90) -> None:
        """Stop sending, then wait (bounded) for what is in flight to finish."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the load did not finish within {timeout:.0f}s of stopping")

    async def _timed(self, kind: str, call, client, n: int) -> None:
        phase, started = self.phase, time.monotonic()
        ok, error = await call(client, n)
        self.results.append(Result(kind, phase, time.monotonic() - started, ok, error))

    async def _questions(self, client: httpx.AsyncClient) -> None:
        started, n, pending = time.monotonic(), 0, set()
        limit = int(self.rate * self.max_seconds)  # bounded in count as well as in time
        while not self._stop.is_set() and n < limit:
            if len(pending) < self.max_in_flight:
                task = asyncio.create_task(self._timed("request", ask, client, n))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                self.held_back[self.phase] = self.held_back.get(self.phase, 0) + 1
            n += 1
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))
        await asyncio.gather(*pending)

    async def _streams(self, client: httpx.AsyncClient, worker: int) -> None:
        deadline, n = time.monotonic() + self.max_seconds, worker
        while not self._stop.is_set() and time.monotonic() < deadline:
            await self._timed("stream", stream, client, n)
            n += self.streams

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(
            base_url=self.url, timeout=REQUEST_TIMEOUT, limits=limits, headers=headers
        ) as client:
            await asyncio.gather(
                self._questions(client), *(self._streams(client, i) for i in range(self.streams))
            )


WRK_SCRIPT = """
local topics = {TOPICS}
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"query": "%s (%s-%d)"}', topics[n % #topics + 1], "NONCE", n)
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer APIKEY"}
  return wrk.format("POST", "/v1/research", headers, body)
end
"""


def run_wrk(url: str, seconds: float) -> dict:
    """wrk, one thread, CONNECTIONS connections, unique questions; its summary as numbers."""
    topics = "{" + ", ".join(f'"{t}"' for t in TOPICS) + "}"
    script = WRK_SCRIPT.replace("{TOPICS}", topics).replace("NONCE", uuid.uuid4().hex[:8])
    script = script.replace("APIKEY", API_KEY)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        lua.write(script)
        lua.flush()
        wrk = require_command("wrk", "wrk", "make bench-scaleout")
        command = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:.0f}s", "--timeout", "45s"]
        out = subprocess.run(
            [*command, "--latency", "-s", lua.name, url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(non_2xx.group(1)) if non_2xx else 0) + (
        sum(int(n) for n in socket.groups()) if socket else 0
    )
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": bench_results.to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": bench_results.to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
        "failed": failed,
        "errors": [
            line.strip() for line in out.splitlines() if "error" in line or "Non-2xx" in line
        ],
    }


def throughput(url: str, replicas: int) -> dict:
    run_wrk(url, 2)  # warm-up: a new replica's first requests are slower
    load_before = os.getloadavg()[0]
    result = run_wrk(url, SECONDS)
    return {**result, "replicas": replicas, "loadavg": (load_before + os.getloadavg()[0]) / 2}


# --- Docker: images, the update, the stop --------------------------------------------------------


def make_images(client: docker.DockerClient, tag: str) -> list[str]:
    """Two tags of our own: the optimized image built from this checkout, and a new version."""
    v1, v2 = f"research-agent:{tag}-v1", f"research-agent:{tag}-v2"
    swarm.build_agent_image(v1)
    # A real new image (another id), not the same one under a second name: APP_VERSION changes,
    # and /health reports it, so the run can check every replica was replaced.
    dockerfile = f"FROM {v1}\nENV APP_VERSION=2.0.0\n".encode()
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=v2, rm=True)
    return [v1, v2]


def rolling_update(client: docker.DockerClient, service: str, image: str) -> float:
    """`docker service update --image`, then wait until Swarm reports the update completed."""
    started = time.monotonic()
    subprocess.run(
        ["docker", "service", "update", "--detach", "--image", image, service],
        check=True,
        capture_output=True,
        timeout=60,
    )
    while time.monotonic() - started < UPDATE_TIMEOUT:
        state = client.services.get(service).attrs.get("UpdateStatus", {}).get("State")
        if state == "completed":
            return time.monotonic() - started
        if state in ("paused", "rollback_started", "rollback_completed", "rollback_paused"):
            raise RuntimeError(f"the rolling update did not complete: {state}")
        time.sleep(1)
    raise TimeoutError(f"the rolling update was not done after {UPDATE_TIMEOUT:.0f}s")


def stop_one_replica(client: docker.DockerClient, service: str) -> dict:
    """`docker stop` one replica's container with the stack's stop_grace_period as its timeout.

    A plain `docker stop` would wait 10 s (its default), not the service's stop_grace_period.
    """
    grace = client.services.get(service).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    timeout = int(grace.get("StopGracePeriod", 10_000_000_000) / 1e9)
    task = swarm.running_tasks(client, service)[0]
    container = client.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
    started = time.monotonic()
    container.stop(timeout=timeout)
    container.reload()
    return {
        "container": container.name,
        "seconds": time.monotonic() - started,
        "exit_code": container.attrs["State"]["ExitCode"],
        "timeout": timeout,
    }


def haproxy_retries(url: str) -> dict:
    """HAProxy's counters for the agents backend: requests re-sent (to another replica or not)."""
    for row in swarm.haproxy_stats(url):
        if row["pxname"] == "agents" and row["svname"] == "BACKEND":
            return {"retries": int(row["wretr"] or 0), "redispatches": int(row["wredis"] or 0)}
    raise RuntimeError("HAProxy's stats have no `agents` backend")


def versions_served(url: str, tries: int = 12) -> set[str]:
    return {httpx.get(f"{url}/health", timeout=10).json()["version"] for _ in range(tries)}


# --- The run -----------------------------------------------------------------------------------


def scale(client: docker.DockerClient, stack: str, url: str, replicas: int) -> None:
    agent = swarm.service_name(stack, "agent")
    if client.services.get(agent).attrs["Spec"]["Mode"]["Replicated"]["Replicas"] != replicas:
        subprocess.run(
            ["docker", "service", "scale", "--detach", f"{agent}={replicas}"],
            check=True,
            capture_output=True,
            timeout=60,
        )
    swarm.wait_until_serving(client, stack, url, replicas=replicas)


def run(client: docker.DockerClient, stack: str, port: int, v1: str, v2: str) -> dict:
    url = f"http://127.0.0.1:{port}"
    agent = swarm.service_name(stack, "agent")
    report: dict = {"url": url, "stack": stack}
    env = swarm.stack_env(
        stack,
        port,
        swarm.edge_subnet(client, stack),  # not the subnet of a lesson-06 stack already up
        AGENT_IMAGE=v1,
        AGENT_REPLICAS="1",
        OFFLINE_TOKEN_DELAY_MS=TOKEN_DELAY_MS,
        OPENAI_API_KEY="",  # the offline model, whatever this shell has set
        API_KEYS=API_KEY,
        # One client sends the whole load, so the per-client limits are off: its 4 streams at a
        # time would otherwise meet MAX_STREAMS_PER_CALLER (4) whenever a new stream starts before
        # the slot of the one that just ended is given back.
        RATE_LIMIT="off",
        MAX_STREAMS_PER_CALLER="0",
    )
    swarm.deploy(stack, env)
    report["throughput"] = []
    for replicas in (1, 3) * ROUNDS:
        scale(client, stack, url, replicas)
        swarm.log(f"throughput with {replicas} replica(s) ({CONNECTIONS} clients, {SECONDS:.0f}s)")
        report["throughput"].append(throughput(url, replicas))
    scale(client, stack, url, 3)  # the steady load runs on 3 replicas

    retries_before = haproxy_retries(url)
    load = Load(url, RATE, STREAMS, max_seconds=PHASE_SECONDS * 2 + UPDATE_TIMEOUT + 120)
    timeline = {}
    swarm.log(f"steady load: {RATE:g} questions/s + {STREAMS} streams; phase `before`")
    load.start()
    started = time.monotonic()
    time.sleep(PHASE_SECONDS)
    timeline["before"] = time.monotonic() - started

    load.phase, started = "update", time.monotonic()
    swarm.log(f"phase `update`: docker service update --image {v2} {agent}")
    report["update_seconds"] = rolling_update(client, agent, v2)
    swarm.wait_until_serving(client, stack, url, replicas=3)
    timeline["update"] = time.monotonic() - started

    load.phase, started = "stop", time.monotonic()
    swarm.log("phase `stop`: docker stop of one replica, until Swarm has replaced it")
    report["stopped"] = stop_one_replica(client, agent)
    swarm.wait_until_serving(client, stack, url, replicas=3)
    timeline["stop"] = time.monotonic() - started

    load.phase, started = "after", time.monotonic()
    swarm.log("phase `after`")
    time.sleep(PHASE_SECONDS)
    load.stop()
    timeline["after"] = time.monotonic() - started

    retries_after = haproxy_retries(url)
    report["haproxy"] = {k: retries_after[k] - retries_before[k] for k in retries_after}
    report["versions"] = sorted(versions_served(url))
    report["timeline"] = timeline
    report["results"] = load.results
    report["held_back"] = load.held_back
    return report


def summarise(results: list[Result], phases=PHASES) -> list[dict]:
    rows = []
    for phase in (*phases, "all"):
        mine = [r for r in results if phase in ("all", r.phase)]
        requests = [r for r in mine if r.kind == "request"]
        streams = [r for r in mine if r.kind == "stream"]
        latencies = [r.seconds for r in requests if r.ok]
        rows.append(
            {
                "phase": phase,
                "sent": len(requests),
                "failed": sum(not r.ok for r in requests),
                "p50": bench_results.percentile(latencies, 50) * 1000,
                "p99": bench_results.percentile(latencies, 99) * 1000,
                "streams": len(streams),
                "done": sum(r.ok for r in streams),
                "cut": sum(not r.ok for r in streams),
            }
        )
    return rows


def print_report(report: dict) -> None:
    rows = summarise(report["results"])
    timeline = {**report["timeline"], "all": sum(report["timeline"].values())}
    print(
        f"\nRolling update and docker stop under load: research agent on Swarm, 3 replicas behind "
        f"HAProxy\n{date.today()}, {platform.node()}, {os.cpu_count()} CPUs, "
        f"`make bench-scaleout`; load: {RATE:g} questions/s (open loop up to {MAX_IN_FLIGHT} "
        f"unanswered, unique questions) + "
        f"{STREAMS} SSE streams at a time (offline model, {TOKEN_DELAY_MS} ms a token)\n"
    )
    print("| phase  | seconds | requests | failed | p50 ms | p99 ms | streams | [DONE] | cut |")
    print("|--------|--------:|---------:|-------:|-------:|-------:|--------:|-------:|----:|")
    for r in rows:
        print(
            f"| {r['phase']:<6} | {timeline[r['phase']]:>7.0f} | {r['sent']:>8} | {r['failed']:>6} "
            f"| {r['p50']:>6.0f} | {r['p99']:>6.0f} | {r['streams']:>7} | {r['done']:>6} "
            f"| {r['cut']:>3} |"
        )
    stopped = report["stopped"]
    print(
        f"\nRolling update to a new image tag: {report['update_seconds']:.0f}s for 3 replicas. "
        f"`docker stop -t {stopped['timeout']}` of one replica: exited with {stopped['exit_code']} "
        f"after {stopped['seconds']:.1f}s. HAProxy re-sent {report['haproxy']['retries']} "
        f"request(s) ({report['haproxy']['redispatches']} to another replica). "
        f"Versions served afterwards: {', '.join(report['versions'])}."
    )
    if held := report["held_back"]:
        print(
            f"The client held back {sum(held.values())} question(s) due while {MAX_IN_FLIGHT} "
            f"were unanswered ({', '.join(f'{k}: {v}' for k, v in held.items())}): the machine "
            "was slower than the load."
        )
    errors = sorted({r.error for r in report["results"] if not r.ok})
    errors += [e for t in report["throughput"] for e in t["errors"]]
    if errors:
        print("Failures:\n  " + "\n  ".join(errors[:10]))

    rounds = report["throughput"]
    if not rounds:
        return
    mean = {n: statistics.mean(t["rps"] for t in rounds if t["replicas"] == n) for n in (1, 3)}
    print(
        f"\nThroughput: POST /v1/research through HAProxy, wrk with {CONNECTIONS} connections, "
        f"{SECONDS:.0f}s a round, unique questions (no cache hits). The machine's 1-minute load "
        f"average is shown: other work on its {os.cpu_count()} CPUs takes its share.\n"
    )
    print("| round | replicas | req/s | p50 ms | p99 ms | failed | load average |")
    print("|------:|---------:|------:|-------:|-------:|-------:|-------------:|")
    for i, t in enumerate(rounds, 1):
        print(
            f"| {i:>5} | {t['replicas']:>8} | {t['rps']:>5.1f} | {t['p50']:>6.0f} "
            f"| {t['p99']:>6.0f} | {t['failed']:>6} | {t['loadavg']:>12.1f} |"
        )
    print(
        f"\nMean: {mean[1]:.1f} req/s with 1 replica, {mean[3]:.1f} with 3: "
        f"{mean[3] / mean[1]:.2f}x the throughput of 1 replica."
    )


def failures(report: dict) -> list[str]:
    total = summarise(report["results"])[-1]
    problems = []
    if total["failed"]:
        problems.append(f"{total['failed']} of {total['sent']} requests failed")
    if total["cut"]:
        problems.append(f"{total['cut']} of {total['streams']} streams were cut")
    if report["versions"] != ["2.0.0"]:
        problems.append(f"after the update the replicas serve versions {report['versions']}")
    if report["stopped"]["exit_code"] == 137:
        problems.append("the stopped replica was killed (exit 137), not stopped")
    problems += [
        f"{t['failed']} failed during the throughput run"
        for t in report["throughput"]
        if t["failed"]
    ]
    return problems


def main() -> int:
    settings = {
        "BENCH_RATE": RATE,
        "BENCH_MAX_IN_FLIGHT": MAX_IN_FLIGHT,
        "BENCH_STREAMS": STREAMS,
        "BENCH_PHASE_SECONDS": PHASE_SECONDS,
        "BENCH_SECONDS": SECONDS,
        "BENCH_ROUNDS": ROUNDS,
        "BENCH_CONNECTIONS": CONNECTIONS,
        "BENCH_TOKEN_DELAY_MS": TOKEN_DELAY_MS,
    }
    results_file = bench_results.start("scaleout", settings)
    client = docker.from_env()
    tag = f"scaleout-{uuid.uuid4().hex[:6]}"
    stack, port = tag, free_port()
    started = time.monotonic()
    joined = swarm.join_swarm_if_needed(client)
    images, report = [], None
    try:
        images = make_images(client, tag)
        report = run(client, stack, port, *images)
    finally:
        if os.getenv("BENCH_KEEP") == "1":
            swarm.log(f"BENCH_KEEP=1: stack {stack} left running on port {port}")
        else:
            cleanup(client, stack, images, joined)
    print_report(report)
    print(f"\nbench-scaleout took {time.monotonic() - started:.0f}s in all")
    problems = failures(report)
    for problem in problems:
        print(f"FAILED: {problem}")
    results_file.write()
    return 1 if problems else 0


def cleanup(client: docker.DockerClient, stack: str, images: list[str], joined: bool) -> None:
    swarm.log(f"removing stack {stack} and images {', '.join(images) or '(none)'}")
    swarm.remove(client, stack)
    for image in reversed(images):
        client.images.remove(image)  # only the tags go when research-agent:optimized is the same
    if joined:
        swarm.log(swarm.leave_swarm_if_joined(client))


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
