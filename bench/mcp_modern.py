"""`make bench-mcp`'s client of the current protocol revision (2026-07-28): the MCP SDK's 2.x
`Client`, one per URL, each kept open, taking turns call by call (load from other work falls on
all alike). Run by lesson 08's environment (mcp 2.x), which the course's cannot import:

    .venv/lesson08/bin/python -m bench.mcp_modern CALLS URL...

Prints one JSON object: {"version": the version each client agreed, "seconds": [[...] per URL]}.
"""

import asyncio
import contextlib
import json
import sys
import time

from mcp import Client

QUERY = {"query": "health checks"}


async def call_times(urls: list[str], n: int) -> dict:
    async with contextlib.AsyncExitStack() as stack:  # closed last to first, as opened
        clients = [await stack.enter_async_context(Client(url)) for url in urls]
        for client in clients:
            for _ in range(10):  # warm: imports, the servers' first answers
                await client.call_tool("search_notes", QUERY)
        times = [[] for _ in clients]
        for _ in range(n):
            for client, timed in zip(clients, times, strict=True):
                started = time.perf_counter()
                await client.call_tool("search_notes", QUERY)
                timed.append(time.perf_counter() - started)
        return {"versions": [c.protocol_version for c in clients], "seconds": times}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(call_times(sys.argv[2:], int(sys.argv[1])))))
