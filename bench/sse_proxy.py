"""Time to first token of the research agent's SSE stream: direct, and behind nginx with and without
honouring the agent's `X-Accel-Buffering: no`.

The nginx configuration is bench/nginx-sse-proxy.conf: Debian's nginx with a common
"gzip everything" block, started here on loopback. Usage (from the repository root):

    python -m bench.sse_proxy [--runs 5] [--token-delay-ms 30]

tests/lesson_02/test_sse_proxy.py uses the same helpers to assert the difference.
"""

import argparse
import re
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from bench import deadline
from bench import results as bench_results
from support.commands import require_command
from support.ports import free_port
from support.server import ServerProcess, offline_environment

ROOT = Path(__file__).resolve().parents[1]
AGENT_DIR = ROOT / "research-agent"
CONFIG = Path(__file__).with_name("nginx-sse-proxy.conf")
QUERY = "Why use a multi-stage Docker build?"


@contextmanager
def research_agent(token_delay_ms: int):
    """`python main.py` on a free loopback port, offline; yields its base URL."""
    port = free_port()
    env = offline_environment(
        HOST="127.0.0.1",
        PORT=port,
        OFFLINE_TOKEN_DELAY_MS=token_delay_ms,
        SHUTDOWN_DRAIN_SECONDS=0,
        LOG_LEVEL="WARNING",
        RATE_LIMIT="off",  # a measurement, not a caller to limit
    )
    script = [sys.executable, "main.py"]
    with ServerProcess(
        script, cwd=AGENT_DIR, env=env, port=port, ready_path="/ready", ready_timeout=60
    ) as agent:
        yield agent.url


@contextmanager
def nginx(agent_base: str):
    """Debian's nginx with bench/nginx-sse-proxy.conf on a free loopback port; yields its URL."""
    binary = require_command("nginx", "nginx", "make bench-sse-proxy")
    port, agent_port = free_port(), agent_base.rsplit(":", 1)[1]
    with tempfile.TemporaryDirectory(prefix="sse-proxy-") as run_dir:
        config = (
            CONFIG.read_text()
            .replace("@RUN_DIR@", run_dir)
            .replace("@LISTEN_PORT@", str(port))
            .replace("@AGENT_PORT@", agent_port)
        )
        (Path(run_dir) / "nginx.conf").write_text(config)
        args = [binary, "-p", run_dir, "-c", f"{run_dir}/nginx.conf"]
        with ServerProcess(args, port=port, ready_timeout=20) as proxy:
            yield proxy.url


@dataclass
class Timing:
    first_token: float  # seconds from sending the request to reading the first token event
    total: float  # seconds to [DONE]
    tokens: int
    streams_open_at_first_token: int  # the agent's research_streams_open when it arrived
    content_encoding: str


def streams_open(agent_base: str) -> int:
    text = httpx.get(f"{agent_base}/metrics", timeout=10).text
    match = re.search(r"^research_streams_open (\S+)$", text, flags=re.M)
    return int(float(match.group(1))) if match else 0


def time_stream(url: str, agent_base: str) -> Timing:
    """One stream through `url`, read as a browser would (it accepts gzip)."""
    started, first, tokens, open_then = time.perf_counter(), None, 0, -1
    with (
        httpx.Client(timeout=60) as client,
        connect_sse(
            client,
            "POST",
            f"{url}/v1/research/stream",
            json={"query": QUERY},
            headers={"Accept-Encoding": "gzip"},
        ) as source,
    ):
        source.response.raise_for_status()
        encoding = source.response.headers.get("content-encoding", "-")
        for event in source.iter_sse():
            if event.event == "token":
                tokens += 1
                if first is None:
                    first = time.perf_counter() - started
                    open_then = streams_open(agent_base)
            if event.data == "[DONE]":
                break
    return Timing(first, time.perf_counter() - started, tokens, open_then, encoding)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--token-delay-ms", type=int, default=30)
    args = parser.parse_args()
    results_file = bench_results.start("sse-proxy", vars(args))

    with research_agent(args.token_delay_ms) as agent, nginx(agent) as proxy:
        paths = {
            "direct (baseline)": agent,
            "nginx, gzip, header honoured": proxy,
            "nginx, gzip, header ignored": f"{proxy}/without-header",
        }
        results = {
            name: [time_stream(url, agent) for _ in range(args.runs)] for name, url in paths.items()
        }

    base = statistics.median(t.first_token for t in results["direct (baseline)"])
    print(
        f"\nTime to first token, {args.runs} streams each, offline model at "
        f"{args.token_delay_ms} ms per word ({results['direct (baseline)'][0].tokens} words)\n"
    )
    print(
        f"| {'path':<30} | encoding | first token (median) | ratio | whole stream | "
        "stream still open at first token |"
    )
    print(
        f"| {'-' * 30} | -------- | -------------------- | ----- | ------------ | "
        "-------------------------------- |"
    )
    for name, timings in results.items():
        first = statistics.median(t.first_token for t in timings)
        total = statistics.median(t.total for t in timings)
        still_open = sum(t.streams_open_at_first_token > 0 for t in timings)
        print(
            f"| {name:<30} | {timings[0].content_encoding:<8} | {first * 1000:>17.0f} ms | "
            f"{first / base:>4.0f}x | {total:>10.2f} s | {still_open}/{len(timings):<30} |"
        )
    results_file.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
