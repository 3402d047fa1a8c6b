"""`make bench-tracing`: what traces cost the research agent, in CPU per request.

Starts three research agents (`python main.py`, offline model, no token delay, no cache, no rate
limit), the same code each:
  no tracing code  research_agent.tracing.otel's configure_tracing and instrument replaced by
  no-ops:
                   the service as it was before lesson 09;
  tracing off      as shipped, without OTEL_EXPORTER_OTLP_ENDPOINT;
  tracing on       OTEL_EXPORTER_OTLP_ENDPOINT at a local OTLP collector (http/protobuf, the
                   SDK's batch span processor with its defaults), every request sampled;
  10% sampled      the same with OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG 0.1.
Then drives POST /v1/research at each in turn, for several rounds, each round starting with the
next agent, so a busy machine slows them alike, and reads the CPU time each server process spent
from /proc: a turn's CPU is counted from its start to the start of the agent's next turn (after
the last round, to a wait past the batch processor's schedule delay), so the spans a turn queued
count with it although the last of them are exported after it, on the 5 s timer. (An idle server
spends about 2 ms of CPU a second, every agent alike.) Divided by the turn's requests. Prints the
medians, and each agent's ratio to "no tracing code" as the median of the rounds' ratios (a
round's agents run seconds apart: a shared machine's load, which changes from round to round,
cancels out). Targets: off at most 2% over it, on at most 10%.
Settings: BENCH_SECONDS per agent and round (default 5), BENCH_ROUNDS (default 5),
BENCH_CONNECTIONS (default 4).
"""

import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

from bench import deadline
from bench import results as bench_results
from support.otlp import OtlpCollector
from support.ports import free_port
from support.server import ServerProcess, cpu_seconds, offline_environment

ROOT = Path(__file__).resolve().parents[1]
AGENT_DIR = ROOT / "research-agent"
SECONDS = float(os.getenv("BENCH_SECONDS", "5"))
ROUNDS = int(os.getenv("BENCH_ROUNDS", "5"))
CONNECTIONS = int(os.getenv("BENCH_CONNECTIONS", "4"))
QUERY = {"query": "How do I make a Docker image smaller?"}
EXPORT_WAIT = 5.5  # past the batch processor's schedule delay (OTEL_BSP_SCHEDULE_DELAY, 5 s)
WITHOUT_TRACING = """
import runpy
import research_agent.tracing.otel
research_agent.tracing.otel.configure_tracing = lambda *args, **kwargs: None
research_agent.tracing.otel.instrument = lambda *args, **kwargs: None
runpy.run_path("main.py", run_name="__main__")  # main.py as it is, its two tracing calls no-ops
"""


def start(args: list[str], **settings) -> ServerProcess:
    port = free_port()
    env = offline_environment(
        HOST="127.0.0.1",
        PORT=port,
        OFFLINE_TOKEN_DELAY_MS=0,
        RATE_LIMIT="off",
        LOG_LEVEL="WARNING",
        **settings,
    )
    return ServerProcess(args, cwd=AGENT_DIR, env=env, port=port, ready_path="/ready").start()


def drive(url: str, seconds: float) -> int:
    """CONNECTIONS clients posting questions for `seconds`; how many were answered."""
    count, errors, lock = [0], [0], threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop_at:
                ok = http.post(url, json=QUERY).status_code == 200
                with lock:
                    count[0] += ok
                    errors[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors[0]:
        sys.exit(f"{url}: {errors[0]} requests failed")
    return count[0]


def main() -> None:
    settings = {"BENCH_SECONDS": SECONDS, "BENCH_ROUNDS": ROUNDS, "BENCH_CONNECTIONS": CONNECTIONS}
    results_file = bench_results.start("tracing", settings)
    servers: dict[str, ServerProcess] = {}
    with OtlpCollector("http/protobuf") as collector:
        try:
            servers["no tracing code"] = start([sys.executable, "-c", WITHOUT_TRACING])
            servers["tracing off"] = start([sys.executable, "main.py"])
            servers["tracing on"] = start(
                [sys.executable, "main.py"],
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                OTEL_SERVICE_NAME="bench-tracing",
            )
            servers["tracing on, 10% sampled"] = start(
                [sys.executable, "main.py"],
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                OTEL_SERVICE_NAME="bench-tracing",
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG="0.1",
            )
            for server in servers.values():  # warm-up
                drive(f"{server.url}/v1/research", 2)
            rounds: list[dict] = [{} for _ in range(ROUNDS)]
            turn: dict[str, tuple] = {}  # agent -> its last turn: (round, CPU at its start, count)

            def close_turn(name: str) -> float:
                now = cpu_seconds(servers[name].pid)
                if name in turn:
                    i, cpu_before, count = turn.pop(name)
                    cpu = (now - cpu_before) * 1000 / max(count, 1)
                    rounds[i][name] = {"cpu": cpu, "rps": count / SECONDS}
                return now

            for i in range(ROUNDS):  # each round starts with the next agent: no agent always first
                order = list(servers)[i % len(servers) :] + list(servers)[: i % len(servers)]
                for n in order:
                    cpu_before = close_turn(n)
                    turn[n] = (i, cpu_before, drive(f"{servers[n].url}/v1/research", SECONDS))
            time.sleep(EXPORT_WAIT)
            for n in list(turn):
                close_turn(n)
        finally:
            for server in servers.values():
                server.stop(grace=30)
        spans = len(collector.spans())
    results = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in ("cpu", "rps")}
        for name in servers
    }
    # Each ratio is the median of the rounds' own ratios: within a round the agents run seconds
    # apart, so a change in the machine's load between rounds cancels out.
    for name in servers:
        for key in ("cpu", "rps"):
            ratios = [r[name][key] / r["no tracing code"][key] for r in rounds]
            results[name][key + "_ratio"] = statistics.median(ratios)
    print(
        f"\nPOST /v1/research (offline model, no cache), {CONNECTIONS} clients, {SECONDS:g}s per "
        f"agent and round, median of {ROUNDS} rounds (a ratio: the median of each round's), "
        f"{os.cpu_count()} CPUs\n"
    )
    bench_results.print_table(
        ["agent", "req/s", "CPU ms/req", "CPU vs no tracing code", "req/s vs no tracing code"],
        [
            [
                name,
                f"{r['rps']:.1f}",
                f"{r['cpu']:.2f}",
                f"{r['cpu_ratio']:.3f}",
                f"{r['rps_ratio']:.3f}",
            ]
            for name, r in results.items()
        ],
    )
    print()
    for name, budget in (("tracing off", 0.02), ("tracing on", 0.10)):
        extra = results[name]["cpu_ratio"] - 1
        verdict = "within" if extra <= budget else "OVER"
        print(f"{name}: {extra:+.1%} CPU per request ({verdict} a {budget:.0%} budget)")
    print(f"spans received by the collector: {spans}")
    if not spans:
        sys.exit("tracing on exported nothing: the comparison is void")
    results_file.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
