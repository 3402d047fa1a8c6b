"""The floor of any gateway for `make bench-mcp`: one more Python HTTP hop and nothing else.

A bare ASGI app under uvicorn, as the gateway runs: each POST's body and its MCP headers are sent
on to UPSTREAM on one kept httpx2 client (the gateway's HTTP client), and the answer's status,
type and body come back as they are. It checks nothing, parses nothing and keeps no session: what
a call through it costs beyond a direct call is what any gateway in Python pays before it does any
work of its own. Not something to deploy: it has none of the gateway's protections.

Run it as a module, by lesson 08's environment: `.venv/lesson08/bin/python -m bench.mcp_relay`
(PORT, UPSTREAM).
"""

import os

import httpx2
import uvicorn

UPSTREAM = os.environ.get("UPSTREAM", "http://127.0.0.1:8000/mcp")
# The request headers an MCP server reads: the rest (Host, Content-Length) are the relay's own.
PASSED = {"accept", "content-type", "authorization", "mcp-session-id"}
http = httpx2.AsyncClient(timeout=30)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":  # 200 at /health, for the benchmark's wait; no GET stream
        status = 200 if scope["path"] == "/health" else 405
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name.decode("latin-1") in PASSED or name.startswith(b"mcp-")
    }
    answer = await http.post(UPSTREAM, content=body, headers=headers)
    sent = [(b"content-type", answer.headers.get("content-type", "application/json").encode())]
    await send({"type": "http.response.start", "status": answer.status_code, "headers": sent})
    await send({"type": "http.response.body", "body": answer.content})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
