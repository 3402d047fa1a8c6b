"""`make bench-a2a`: what A2A costs lesson 12's research agent, on a real PostgreSQL.

1. A research answer (the offline model, 15 ms a token, one search) asked of the same agent in
   process (its graph, with the Postgres checkpointer) and through A2A
   (code/lesson12/a2a_server.py: the
   SDK's client with the card read once and a kept connection, SendMessage, the task and its
   events stored in PostgreSQL): median of BENCH_ROUNDS interleaved answers each; target <= 1.3x.
2. The protocol's own time per message: the smallest A2A agent (code/lesson12/echo.py, which
   completes each task with what it was sent) in the same composition, against a plain FastAPI
   POST that echoes its body, both over a kept connection on loopback; p50 and p99 of
   BENCH_MESSAGES each, and the difference of the p50s: target <= 2.5x the plain POST's p50.
   Beside it, the database's part of a message, as PostgreSQL counts it (pg_stat_statements and
   over the same messages): statements, how many of them are BEGIN, COMMIT or ROLLBACK, and the
   time it spent executing them, per message.

BENCH_PROFILE=1 then records the server with py-spy over one more loop of PROFILED messages
(bench/profiling.py): the flame graph goes to docs/images/a2a-profile.svg and the top costs, the
lesson's own code and the packages the samples were in are printed.
"""

import asyncio
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import uvicorn
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import new_text_message
from a2a.types import Role, SendMessageRequest
from fastapi import FastAPI, Request
from langchain_core.messages import HumanMessage
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

from bench import deadline, profiling
from bench import results as bench_results
from bench.results import percentile
from lesson12.agent import build_agent
from research_agent import make_pool, migrate
from support.ports import free_port
from support.postgres import PostgresServer
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
MESSAGES = int(os.environ.get("BENCH_MESSAGES", "200"))
QUESTION = "Why use a multi-stage Docker build?"
DELAY_MS = 15  # the research agent's default offline pace
OVERHEAD_TARGET = 2.5  # the protocol's overhead per message, p50, against a plain POST's p50
PROFILE = os.getenv("BENCH_PROFILE") == "1"
PROFILED = 1000  # messages in the profile's loop: a message keeps the server busy about 3 ms
PROFILE_SVG = ROOT / os.getenv("BENCH_PROFILE_SVG", "docs/images/a2a-profile.svg")  # or elsewhere
# pg_stat_statements counts each statement the server runs, with the time it took.
POSTGRES_SETTINGS = {"shared_preload_libraries": "pg_stat_statements"}


def database_counts(dsn: str) -> dict[str, float]:
    """What PostgreSQL has run for the database of `dsn` so far (pg_stat_statements): statements,
    those of them that open or end a transaction (BEGIN, COMMIT, ROLLBACK), and the milliseconds
    spent executing them."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        found = conn.execute(
            "SELECT coalesce(sum(calls), 0), coalesce(sum(calls) FILTER (WHERE query ~* "
            "'^(begin|commit|rollback)'), 0), coalesce(sum(total_exec_time), 0) "
            "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
            (name,),
        ).fetchone()
    return dict(zip(("statements", "transaction", "ms"), map(float, found), strict=True))


def server(dsn: str, callers: Path, **settings) -> ServerProcess:
    port = free_port()
    env = offline_environment(
        DATABASE_URL=dsn, PORT=port, ALLOWED_HOSTS='["127.0.0.1"]',  # a name: no port
        A2A_CALLERS_FILE=callers, OFFLINE_TOKEN_DELAY_MS=DELAY_MS, **settings,
    )  # fmt: skip
    return ServerProcess([sys.executable, "-m", "lesson12.a2a_server"], cwd=ROOT, env=env,
                         port=port, ready_path="/ready", ready_timeout=120).start()  # fmt: skip


async def a2a_client(url: str, token: str):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=120)
    card = await A2ACardResolver(http, url).get_agent_card()  # read once
    config = ClientConfig(httpx_client=http, streaming=False)
    return ClientFactory(config).create(card), http


async def ask(client, text: str) -> float:
    message = new_text_message(text)
    message.role = Role.ROLE_USER
    began = time.perf_counter()
    async for _ in client.send_message(SendMessageRequest(message=message)):
        pass
    return time.perf_counter() - began


async def research(dsn: str, url: str, token: str) -> dict[str, list[float]]:
    pool = make_pool(dsn)
    await pool.open(wait=True)
    checkpointer = AsyncPostgresSaver(pool)
    await migrate(pool, checkpointer.setup)
    agent = build_agent(checkpointer)
    client, http = await a2a_client(url, token)
    times = {"in process": [], "through A2A": []}
    for n in range(ROUNDS + 1):  # the first of each warms up, and is left out
        config = {"configurable": {"thread_id": f"bench-{n}"}}
        began = time.perf_counter()
        async for _ in agent.astream({"messages": [HumanMessage(QUESTION)]}, config,
                                     stream_mode="updates", durability="sync"):  # fmt: skip
            pass
        local = time.perf_counter() - began
        remote = await ask(client, QUESTION)
        if n:
            times["in process"].append(local)
            times["through A2A"].append(remote)
    await client.close()
    await http.aclose()
    await pool.close()
    return times


def plain_echo() -> tuple[str, uvicorn.Server]:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"text": (await request.json())["text"]}

    port = free_port()
    served = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    threading.Thread(target=served.run, daemon=True).start()
    wait_for(lambda: served.started, timeout=30, what="the plain echo")
    return f"http://127.0.0.1:{port}", served


async def messages(url: str, token: str, plain: str, dsn: str) -> tuple[dict, dict]:
    """The two kinds of message, taking turns; and what the database ran for the A2A ones, per
    message (the connection's own checks, one a loop, are within the spread)."""
    client, http = await a2a_client(url, token)
    times = {"A2A SendMessage (echo agent)": [], "plain FastAPI POST (echo)": []}
    async with httpx.AsyncClient(timeout=30) as kept:
        for n in range(MESSAGES + 10):  # ten to warm up
            if n == 10:
                before = await asyncio.to_thread(database_counts, dsn)
            remote = await ask(client, f"message {n}")
            began = time.perf_counter()
            (await kept.post(plain + "/echo", json={"text": f"message {n}"})).raise_for_status()
            local = time.perf_counter() - began
            if n >= 10:
                times["A2A SendMessage (echo agent)"].append(remote)
                times["plain FastAPI POST (echo)"].append(local)
    after = await asyncio.to_thread(database_counts, dsn)
    await client.close()
    await http.aclose()
    return times, {k: (after[k] - before[k]) / MESSAGES for k in after}


def profile_server(echo: ServerProcess, token: str) -> list[str]:
    """py-spy over PROFILED messages to the echo agent's server (bench/profiling.py)."""
    spy = profiling.py_spy()
    if spy is None:
        return ["Profile: not recorded: no py-spy in this environment (bench/profiling.py)"]

    async def loop():
        client, http = await a2a_client(echo.url, token)
        for n in range(PROFILED):
            await ask(client, f"profiled {n}")
        await client.close()
        await http.aclose()

    return profiling.profile(
        echo.pid, lambda: asyncio.run(loop()), PROFILE_SVG, spy, own="lesson12/",
        of="lesson 12's server with the echo agent", what=f"over {PROFILED} messages",
        own_title="lesson 12's own code (code/lesson12/)",
    )  # fmt: skip


def main() -> None:
    settings = {
        "BENCH_ROUNDS": ROUNDS,
        "BENCH_MESSAGES": MESSAGES,
        "OFFLINE_TOKEN_DELAY_MS": DELAY_MS,
    }
    results_file = bench_results.start("a2a", settings)
    token = os.urandom(16).hex()
    with PostgresServer(settings=POSTGRES_SETTINGS) as postgres:
        callers = Path(postgres.dir) / "callers"
        callers.write_text(f"bench {token}\n")
        research_dsn = postgres.create_database()
        agent = server(research_dsn, callers)
        try:
            answers = asyncio.run(research(research_dsn, agent.url, token))
        finally:
            agent.stop()
        echo_dsn = postgres.create_database()
        echo = server(echo_dsn, callers, A2A_AGENT="lesson12.echo:EchoExecutor")
        plain, plain_server = plain_echo()
        try:
            sent, database = asyncio.run(messages(echo.url, token, plain, echo_dsn))
            profile = profile_server(echo, token) if PROFILE else []
        finally:
            echo.stop()
            plain_server.should_exit = True
    local, remote = (statistics.median(answers[k]) for k in ("in process", "through A2A"))
    print(f"\nA research answer (offline model, {DELAY_MS} ms a token), median of {ROUNDS} each\n")
    print("| the same agent | median ms | vs in process |")
    print("| --- | ---: | ---: |")
    for name, median in (("in process", local), ("through A2A", remote)):
        print(f"| {name} | {median * 1000:.0f} | {median / local:.3f} |")
    verdict = "within" if remote / local <= 1.3 else "OVER"
    print(f"\nthrough A2A: {remote / local:.3f}x ({verdict} the 1.3x target)")
    print(f"\nOne message and its answer, {MESSAGES} each, kept connection, loopback\n")
    print("| | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for name, times in sent.items():
        print(
            f"| {name} | {percentile(times, 50) * 1000:.1f} | {percentile(times, 99) * 1000:.1f} |"
        )
    a2a, plain_p50 = (percentile(t, 50) for t in sent.values())
    overhead = a2a - plain_p50
    ratio = overhead / plain_p50
    verdict = "met" if ratio <= OVERHEAD_TARGET else "MISSED"
    print(
        f"\nthe protocol's overhead per message, p50: {overhead * 1000:.1f} ms, {ratio:.2f}x a "
        f"plain POST (target <= {OVERHEAD_TARGET}x: {verdict})"
    )
    print("\nWhat PostgreSQL ran per A2A message (pg_stat_statements)\n")
    print("| statements | of them BEGIN, COMMIT, ROLLBACK | executing ms | share of the overhead |")
    print("| ---: | ---: | ---: | ---: |")
    print(
        f"| {database['statements']:.1f} | {database['transaction']:.1f} | "
        f"{database['ms']:.2f} | {database['ms'] / 1000 / overhead:.0%} |"
    )
    for line in profile:
        print(line)
    results_file.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
