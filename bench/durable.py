"""`make bench-durable`: what lesson 10's durability costs, on a real PostgreSQL (tests/support/).

1. An agent request (offline model, its default 20 ms a token, no tools) with LangGraph's Postgres
   checkpointer (durability "sync") vs the same agent without one: median of BENCH_ROUNDS
   interleaved requests each; target <= 1.15x.
2. A replica killed (-9) while a run's answer is being written, a new process started on the same
   database: from its start to the resumed stream's next event (p50 and p99 of BENCH_RESTARTS).
3. BENCH_WAITING runs waiting for approval: the API's memory (RSS) and its database connections
   before and after (target: flat, as a waiting run holds neither).
"""

import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx
import psycopg
from httpx_sse import connect_sse

from bench import deadline
from bench import results as bench_results
from bench.results import percentile
from research_agent import make_pool, migrate
from support.ports import free_port
from support.postgres import PostgresServer
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
RESTARTS = int(os.environ.get("BENCH_RESTARTS", "5"))
WAITING = int(os.environ.get("BENCH_WAITING", "1000"))
QUESTION = "Why should a run be data?"  # no arithmetic: the offline model answers, no tool


async def checkpointer_ratio(dsn: str) -> dict:
    from langchain.agents import create_agent
    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    from chat_model import OfflineChatModel

    pool = make_pool(dsn)
    await pool.open(wait=True, timeout=60)
    saver = AsyncPostgresSaver(pool)
    await migrate(pool, saver.setup)
    model = OfflineChatModel(token_delay_ms=20)
    agents = {"no checkpointer": create_agent(model, []),
              "Postgres checkpointer": create_agent(model, [], checkpointer=saver)}  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in agents}
    for i in range(ROUNDS + 1):  # the first round warms both up, and is not counted
        for name, agent in agents.items():
            config = {"configurable": {"thread_id": f"bench-{i}"}}
            began = time.perf_counter()
            # durability="sync" as lesson 10 runs it (without a checkpointer: nothing to sync).
            durable = {"durability": "sync"} if name != "no checkpointer" else {}
            await agent.ainvoke({"messages": [HumanMessage(QUESTION)]}, config, **durable)
            if i:
                times[name].append(time.perf_counter() - began)
    await pool.close()
    return {name: statistics.median(t) for name, t in times.items()}


def api(dsn: str, **settings) -> ServerProcess:
    port = free_port()
    env = offline_environment(DATABASE_URL=dsn, PORT=port, SANDBOX_IMAGE="python:3.11-slim",
                              SANDBOX_OWNER="bench-durable", **settings)  # fmt: skip
    return ServerProcess([sys.executable, "-m", "lesson10.durable_runs"], cwd=ROOT,
                         env=env, port=port, ready_timeout=120)  # fmt: skip


def resumed_event_seconds(dsn: str) -> list[float]:
    """Kill -9 during the answer's model call; a new process; its start -> the next event."""
    found = []
    for _ in range(RESTARTS):
        first = api(dsn, OFFLINE_TOKEN_DELAY_MS=300, LEASE_SECONDS=2).start()
        with httpx.Client(base_url=first.url, timeout=30) as c:
            created = c.post("/v1/runs", json={"query": QUESTION}).json()
        run_id, token = created["run_id"], created["owner_token"]
        with psycopg.connect(dsn) as conn:
            query = "SELECT max(seq) FROM events WHERE run_id = %s"
            last = wait_for(lambda: conn.execute(query, (run_id,)).fetchone()[0],  # noqa: B023
                            timeout=120, what="the run started")  # fmt: skip
        first.process.kill()
        first.process.wait(30)
        second = api(dsn, LEASE_SECONDS=2)
        began = time.monotonic()
        second.start()
        headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(last)}
        with (
            httpx.Client(base_url=second.url, headers=headers, timeout=120) as client,
            connect_sse(client, "GET", f"/v1/runs/{run_id}/events") as source,
        ):
            for event in source.iter_sse():
                if event.id:
                    found.append(time.monotonic() - began)
                    break
        second.stop()
    return found


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def connections(admin_dsn: str, database: str) -> int:
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,))
        return row.fetchone()[0]


def waiting_runs(dsn: str, admin_dsn: str, database: str) -> dict:
    server = api(dsn, OFFLINE_TOKEN_DELAY_MS=0, MAX_ACTIVE_RUNS_PER_OWNER=WAITING + 10).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.post("/v1/runs", json={"query": "What is 1+1?"})  # one run first: warm
            time.sleep(5)
            before = {"rss": rss_mib(server.pid), "conns": connections(admin_dsn, database)}
            for _ in range(WAITING):
                assert c.post("/v1/runs", json={"query": "What is 2**100?"}).status_code == 202
        with psycopg.connect(dsn) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM runs WHERE state = "
                                          "'waiting_for_approval'").fetchone()[0] > WAITING,
                     timeout=3600, interval=1, what="every run waiting")  # fmt: skip
        time.sleep(5)
        after = {"rss": rss_mib(server.pid), "conns": connections(admin_dsn, database)}
    finally:
        server.stop()
    return {"before": before, "after": after}


def main() -> None:
    settings = {"BENCH_ROUNDS": ROUNDS, "BENCH_RESTARTS": RESTARTS, "BENCH_WAITING": WAITING}
    results_file = bench_results.start("durable", settings)
    with PostgresServer() as server:
        medians = asyncio.run(checkpointer_ratio(server.create_database()))
        restarts = resumed_event_seconds(server.create_database())
        waiting_dsn = server.create_database()
        waiting = waiting_runs(waiting_dsn, server.dsn, waiting_dsn.rsplit("/", 1)[1])
    ratio = medians["Postgres checkpointer"] / medians["no checkpointer"]
    print(f"\nAgent request (offline model, 20 ms a token), median of {ROUNDS} each\n")
    print("| agent | median ms | vs no checkpointer |")
    print("| --- | ---: | ---: |")
    for name, median in medians.items():
        print(f"| {name} | {median * 1000:.0f} | {median / medians['no checkpointer']:.3f} |")
    verdict = "within" if ratio <= 1.15 else "OVER"
    print(f"\ncheckpointer: {ratio:.3f}x ({verdict} the 1.15x target)")
    print(f"\nRestarted process start -> resumed stream's next event, {len(restarts)} kills\n")
    print("| p50 s | p99 s |")
    print("| ---: | ---: |")
    print(f"| {percentile(restarts, 50):.1f} | {percentile(restarts, 99):.1f} |")
    b, a = waiting["before"], waiting["after"]
    print(f"\n{WAITING} runs waiting for approval\n")
    print("| | before | after | after / before |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| API RSS MiB | {b['rss']:.0f} | {a['rss']:.0f} | {a['rss'] / b['rss']:.2f} |")
    print(f"| DB connections | {b['conns']} | {a['conns']} | {a['conns'] / b['conns']:.2f} |")
    results_file.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
