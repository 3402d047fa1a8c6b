"""`make bench-api`: what the production habits of lesson 01 cost in throughput and latency.

Starts each API in turn on a free port (offline model, no token delay, cache off), drives
POST /v1/invoke with wrk, and prints one table. Settings: BENCH_SECONDS (default 10),
BENCH_CONNECTIONS (default 16).
"""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {
    "bare FastAPI": ROOT / "scripts" / "bare_api.py",
    "01 basic": ROOT / "code" / "01_basic_api.py",
    "01 production": ROOT / "code" / "01_production_api.py",
}
SECONDS = int(os.getenv("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.getenv("BENCH_CONNECTIONS", "16"))
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"query": "What is a container?"}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited early with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer within {timeout}s")


def to_ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def run_wrk(url: str, lua: str, seconds: int) -> dict:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", lua, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        sys.exit(f"wrk saw error responses:\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(re.search(r"\s50%\s+(\S+)", out).group(1)),
        "p99": to_ms(re.search(r"\s99%\s+(\S+)", out).group(1)),
    }


def bench(script: Path, lua: str) -> dict:
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "OFFLINE_TOKEN_DELAY_MS": "0",
        "CACHE_MAX_ENTRIES": "0",
    }
    env.pop("OPENAI_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process)
        url = f"http://127.0.0.1:{port}/v1/invoke"
        run_wrk(url, lua, 2)  # warm-up: imports, caches, connection setup
        return run_wrk(url, lua, SECONDS)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(WRK_SCRIPT)
    results = {name: bench(script, lua.name) for name, script in TARGETS.items()}
    os.unlink(lua.name)
    basic = results["01 basic"]["rps"]
    print(
        f"\nPOST /v1/invoke, wrk 1 thread, {CONNECTIONS} connections, {SECONDS}s per API,"
        f" {os.cpu_count()} CPUs\n"
    )
    print(f"| {'API':<14} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7} | {'vs basic':>8} |")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 10}|")
    for name, r in results.items():
        print(
            f"| {name:<14} | {r['rps']:>8.0f} | {r['p50']:>7.2f} | {r['p99']:>7.2f}"
            f" | {r['rps'] / basic:>8.2f} |"
        )
    cost = 1 - results["01 production"]["rps"] / basic
    verdict = "within" if cost <= 0.15 else "OVER"
    print(
        f"\nProduction habits cost {cost:.1%} of the basic API's throughput"
        f" ({verdict} the 15% budget)."
    )


if __name__ == "__main__":
    main()
