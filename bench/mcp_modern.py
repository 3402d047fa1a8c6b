"""`make bench-mcp`'s client of the current protocol revision (2026-07-28): the MCP SDK's 2.x
`Client`, one per URL, each kept open, taking turns call by call (load from other work falls on
all alike). Run by lesson 08's environment (mcp 2.x), which the course's cannot import:

    .venv/lesson08/bin/python -m bench.mcp_modern CALLS POST_URL URL...

A plain POST to POST_URL (bench/bare_api.py's /v1/invoke, with a kept httpx client) takes its turn
in the same loop: the baseline. Prints one JSON object: {"versions": the version each client
agreed, "seconds": [[...] per URL, then the POST's]}.
"""

import asyncio
import contextlib
import json
import sys
import time

import httpx
from mcp import Client

QUERY = {"query": "health checks"}


async def call_times(post_url: str, urls: list[str], n: int) -> dict:
    async with contextlib.AsyncExitStack() as stack:  # closed last to first, as opened
        clients = [await stack.enter_async_context(Client(url)) for url in urls]
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=60))

        async def post():
            (await http.post(post_url, json=QUERY)).raise_for_status()

        calls = [lambda c=client: c.call_tool("search_notes", QUERY) for client in clients]
        calls.append(post)
        for call in calls:
            for _ in range(10):  # warm: imports, the servers' first answers
                await call()
        times = [[] for _ in calls]
        for _ in range(n):
            for call, timed in zip(calls, times, strict=True):
                started = time.perf_counter()
                await call()
                timed.append(time.perf_counter() - started)
        return {"versions": [c.protocol_version for c in clients], "seconds": times}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(call_times(sys.argv[2], sys.argv[3:], int(sys.argv[1])))))
