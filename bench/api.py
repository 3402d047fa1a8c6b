"""`make bench-api`: what each step of lesson 01 costs in throughput, latency and CPU.

Starts every API on a free port (offline model, no token delay, cache off), then drives
POST /v1/invoke of each in turn with wrk, for several rounds, so that a busy machine slows them all
alike. Prints one table of medians over the rounds: throughput, latency, and the CPU time the server
process spent per request (read from /proc), which other work on a shared machine disturbs far less
than throughput; each API's throughput and CPU per request also as a ratio to step 1's, the basic
API.
Settings: BENCH_SECONDS per API and round (default 5), BENCH_ROUNDS (default 5), BENCH_CONNECTIONS
(default 16).
"""

import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import deadline
from bench import results as bench_results
from support.commands import require_command
from support.lessons import run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment

ROOT = Path(__file__).resolve().parents[1]
# Each step of lesson 01 adds one habit to the one before; the production version adds the rest.
TARGETS = {
    "bare FastAPI": ROOT / "bench" / "bare_api.py",
    "01 step 1 (basic)": ROOT / "code" / "lesson01" / "step1_api.py",
    "01 step 2 (request ids)": ROOT / "code" / "lesson01" / "step2_request_ids.py",
    "01 step 3 (metrics)": ROOT / "code" / "lesson01" / "step3_metrics.py",
    "01 step 4 (errors)": ROOT / "code" / "lesson01" / "step4_errors.py",
    "01 step 5 (shutdown)": ROOT / "code" / "lesson01" / "step5_shutdown.py",
    "01 production": ROOT / "code" / "lesson01" / "production_api.py",
}
BASIC, HABITS = "01 step 1 (basic)", ["01 step 5 (shutdown)", "01 production"]
SECONDS = int(os.getenv("BENCH_SECONDS", "5"))
ROUNDS = int(os.getenv("BENCH_ROUNDS", "5"))
CONNECTIONS = int(os.getenv("BENCH_CONNECTIONS", "16"))
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"query": "What is a container?"}'
wrk.headers["Content-Type"] = "application/json"
"""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, lua: str, seconds: int, pid: int) -> dict:
    wrk = require_command("wrk", "wrk", "make bench-api")
    cpu_before = cpu_seconds(pid)
    out = subprocess.run(
        [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", lua, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,  # wrk stops itself after -d; this bounds a wrk that hangs
    ).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw error responses:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        "cpu": (cpu_seconds(pid) - cpu_before) * 1000 / max(requests, 1),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": bench_results.to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": bench_results.to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
    }


def start(script: Path) -> ServerProcess:
    """The script on a free port, offline, with the cache off: every request does the work."""
    port = free_port()
    env = offline_environment(HOST="127.0.0.1", PORT=port, OFFLINE_TOKEN_DELAY_MS=0)
    env["CACHE_MAX_ENTRIES"] = "0"
    return ServerProcess(
        [sys.executable, *run_module(script)], cwd=ROOT, env=env, port=port
    ).start()


def bench(lua: str) -> dict[str, dict]:
    servers: dict[str, ServerProcess] = {}
    try:
        for name, script in TARGETS.items():
            servers[name] = server = start(script)
            run_wrk(f"{server.url}/v1/invoke", lua, 2, server.pid)  # warm-up
        rounds = [
            {
                name: run_wrk(f"{server.url}/v1/invoke", lua, SECONDS, server.pid)
                for name, server in servers.items()
            }
            for _ in range(ROUNDS)
        ]
    finally:
        for server in servers.values():
            server.stop(grace=30)
    return {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]}
        for name in TARGETS
    }


def main() -> None:
    settings = {"BENCH_SECONDS": SECONDS, "BENCH_ROUNDS": ROUNDS, "BENCH_CONNECTIONS": CONNECTIONS}
    results_file = bench_results.start("api", settings)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRK_SCRIPT)
    try:
        results = bench(lua.name)
    finally:
        os.unlink(lua.name)
    basic = results[BASIC]
    print(
        f"\nPOST /v1/invoke, wrk 1 thread, {CONNECTIONS} connections, {SECONDS}s per API and "
        f"round, median of {ROUNDS} rounds, {os.cpu_count()} CPUs\n"
    )
    bench_results.print_table(
        ["API", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "req/s vs basic", "CPU vs basic"],
        [
            [
                name,
                f"{r['rps']:.0f}",
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['cpu']:.2f}",
                f"{r['rps'] / basic['rps']:.2f}",
                f"{r['cpu'] / basic['cpu']:.2f}",
            ]
            for name, r in results.items()
        ],
    )
    print()
    for name in HABITS:
        extra = results[name]["cpu"] / basic["cpu"] - 1
        verdict = "within" if extra <= 0.15 else "OVER"
        print(
            f"{name}: {extra:+.1%} CPU per request against the basic API ({verdict} a 15% budget)"
        )
    results_file.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
