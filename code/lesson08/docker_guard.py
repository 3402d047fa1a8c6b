"""Lesson 08, going further: the one process with the Docker socket, in front of one caller.

Access to the Docker socket is root on the host: whoever holds it can start a privileged container
with / mounted. So in Compose only a guard mounts it, and a service that needs Docker talks to a
guard of its own (DOCKER_HOST=tcp://<guard>:2375): the gateway, to start the catalog's tool servers
(GUARD_POLICY=tools), and the python server, to run lesson 04's sandboxes (GUARD_POLICY=sandbox).

What each caller may ask is lesson08/guard_policy.py; this file is the HTTP side. It reads a
request (bounded), asks the policy, checks that a container the request names carries the owner's
label, and sends Docker the request the policy built, never the caller's own bytes. An event stream
and an attached container (a sandbox's stdin and output, over an upgraded connection) are relayed
for one of the owner's containers, for a bounded time, a bounded number at once. Anything else is a
403 that says why.

Run: python -m lesson08.docker_guard (GUARD_*, in lesson08.guard_policy.Settings).
"""

import asyncio
import contextlib
import json
import logging
from urllib.parse import urlencode

import h11
import httpx

from lesson08.guard_policy import (
    MIN_API_VERSION,
    SERVER_LABEL,
    Plan,
    Refused,
    Settings,
    plan,
    policy_for,
)

logger = logging.getLogger("docker_guard")
MAX_BODY = 1024 * 1024  # a request's body (a sandbox's create is about 11 KB)
MAX_EVENTS_BYTES = 1024 * 1024  # one container's events
IDLE_SECONDS = 120  # a kept connection that sends no request is closed
CHUNK = 64 * 1024
CLOSE = ("connection", "close")
UPGRADE = [("connection", "Upgrade"), ("upgrade", "tcp")]


class Guard:
    def __init__(self, settings: Settings):
        self.settings, self.policy = settings, policy_for(settings)
        self.docker = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=settings.GUARD_DOCKER_SOCKET),
            base_url="http://docker",
            timeout=60,
        )
        self.api: str | None = None  # the daemon's API version: the only one forwarded
        self.streams = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection: its requests, one after another."""
        conn = h11.Connection(h11.SERVER)
        try:
            while (request := await read_request(conn, reader)) is not None:
                await self.answer(conn, reader, writer, *request)
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break  # closing, or an attached container's stream has ended
                conn.start_next_cycle()
        except Refused as exc:  # a body over the limit
            with contextlib.suppress(h11.ProtocolError, OSError, TimeoutError):
                await respond(conn, writer, exc.status, {"message": str(exc)})
                writer.write_eof()
                await discard(
                    reader
                )  # closed on unread bytes, the connection resets, answer and all
        except (h11.ProtocolError, OSError, TimeoutError):  # a broken or idle client
            pass
        finally:
            writer.close()

    async def answer(self, conn, reader, writer, request: h11.Request, body: bytes) -> None:
        method, target = request.method.decode(), request.target.decode("ascii", "replace")
        try:
            step = plan(self.policy, self.settings, await self.pinned(), method, target, body)
            if step.container:
                step = step.at(await self.owned(step.container, step.server))
            if step.kind == "upgrade":
                await self.attach(conn, reader, writer, step)
            elif step.kind == "stream":
                await self.events(conn, writer, step)
            else:
                await self.forward(conn, writer, method, step)
        except Refused as exc:
            why = str(exc) if exc.status == 404 else f"refused by the lesson 08 Docker guard: {exc}"
            if exc.status != 404:
                line = {"event": "refused", "request": f"{method} {target[:200]}", "why": str(exc)}
                logger.warning(json.dumps(line))
            await respond(conn, writer, exc.status, {"message": why})
        except httpx.HTTPError as exc:
            await respond(
                conn, writer, 502, {"message": f"the Docker guard cannot reach Docker: {exc}"}
            )

    async def pinned(self) -> str:
        if self.api is None:
            version = (await self.docker.get("/version")).json()["ApiVersion"]
            if tuple(int(n) for n in version.split(".")) < MIN_API_VERSION:
                raise Refused(f"Docker's API {version} is older than the policies' 1.41", 502)
            self.api = version
        return self.api

    async def owned(self, container: str, server: str | None = None) -> str:
        """The container's full id, if it carries the owner's label (and runs `server`)."""
        answer = await self.docker.get(f"/v{self.api}/containers/{container}/json")
        if answer.status_code == 404:
            raise Refused(f"No such container: {container}", 404)
        found = answer.json() if answer.status_code == 200 else {}
        labels = (found.get("Config") or {}).get("Labels") or {}
        if labels.get(self.policy.owner_label) != self.settings.GUARD_OWNER:
            raise Refused(f"{container} is not a container of {self.settings.GUARD_OWNER}")
        if server is not None and labels.get(SERVER_LABEL) != server:
            raise Refused(f"{container} is not the {server} server")
        return found["Id"]

    async def forward(self, conn, writer, method: str, step: Plan) -> None:
        headers = {"content-type": "application/json"} if step.body else {}
        # A wait is answered when the container exits: within its clock, at most the longest.
        timeout = self.settings.GUARD_MAX_SECONDS + 60 if step.kind == "wait" else 60
        answer = await self.docker.request(
            method,
            step.path,
            params=step.params,
            content=step.body,
            headers=headers,
            timeout=httpx.Timeout(60, read=timeout),
        )
        content, kind = answer.content, answer.headers.get("content-type", "text/plain")
        if step.kind == "info" and answer.status_code == 200:  # the runtimes' names, nothing else
            content = json.dumps({"Runtimes": dict.fromkeys(answer.json().get("Runtimes", {}), {})})
        await respond(conn, writer, answer.status_code, content, kind, head=method == "HEAD")

    @contextlib.contextmanager
    def stream_slot(self):
        if self.streams >= self.settings.GUARD_MAX_STREAMS:
            raise Refused(f"{self.streams} streams are open, the most this guard relays", 429)
        self.streams += 1
        try:
            yield
        finally:
            self.streams -= 1

    async def events(self, conn, writer, step: Plan) -> None:
        """One container's events, relayed as they come, until Docker ends the stream (the
        policy bounded its `until`), a time limit or a size limit."""
        timeout = httpx.Timeout(60, read=None)
        with self.stream_slot():
            async with self.docker.stream(
                "GET", step.path, params=step.params, timeout=timeout
            ) as up:
                if up.status_code != 200:
                    return await respond(conn, writer, up.status_code, await up.aread())
                chunked = [("content-type", "application/json"), ("transfer-encoding", "chunked")]
                send(writer, conn, h11.Response(status_code=200, headers=[*chunked, CLOSE]))
                sent = 0
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.GUARD_MAX_SECONDS):
                        async for chunk in up.aiter_raw():
                            sent += len(chunk)
                            if sent > MAX_EVENTS_BYTES:
                                break
                            send(writer, conn, h11.Data(data=chunk))
                            await writer.drain()
                send(writer, conn, h11.EndOfMessage())
                await writer.drain()

    async def attach(self, conn, reader, writer, step: Plan) -> None:
        """Attach to the container for the caller: Docker answers 101 and the connection becomes
        the container's stdin one way and its multiplexed output the other, relayed both ways
        (a half-close too: the end of stdin) until Docker ends it or the time limit."""
        if conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            raise Refused("attach only as an upgraded connection (Upgrade: tcp)")
        with self.stream_slot():
            socket = self.settings.GUARD_DOCKER_SOCKET
            up_reader, up_writer = await asyncio.open_unix_connection(socket)
            try:
                upstream = h11.Connection(h11.CLIENT)
                target = f"{step.path}?{urlencode(step.params)}"
                headers = [("host", "docker"), *UPGRADE, ("content-length", "0")]
                request = h11.Request(method="POST", target=target, headers=headers)
                send(up_writer, upstream, request, h11.EndOfMessage())
                status, content = await read_response(upstream, up_reader)
                if status != 101:  # no such container, or not running: Docker's answer
                    return await respond(conn, writer, status, content)
                raw = [("content-type", "application/vnd.docker.raw-stream"), *UPGRADE]
                upgraded = h11.InformationalResponse(
                    status_code=101, headers=raw, reason=b"UPGRADED"
                )
                send(writer, conn, upgraded)
                # Bytes that came with the request or the 101 (h11 read them) go first.
                stdin = relay(reader, up_writer, conn.trailing_data[0], end_with_eof=True)
                output = relay(up_reader, writer, upstream.trailing_data[0], end_with_eof=False)
                inbound = asyncio.ensure_future(stdin)
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(output, self.settings.GUARD_MAX_SECONDS)
                finally:
                    inbound.cancel()
            finally:
                up_writer.close()


def send(writer: asyncio.StreamWriter, conn: h11.Connection, *events) -> None:
    for event in events:
        writer.write(conn.send(event))


async def read_request(conn: h11.Connection, reader) -> tuple[h11.Request, bytes] | None:
    """The next request and its body (bounded), or None once the client has gone."""
    request, body = None, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await asyncio.wait_for(reader.read(CHUNK), IDLE_SECONDS))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise Refused(f"a body over {MAX_BODY} bytes", 413)
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:  # the client closed the connection
            return None


async def discard(reader: asyncio.StreamReader) -> None:
    """Read what the client still sends, and drop it: at most 4 MiB, for at most 10 s."""
    async with asyncio.timeout(10):
        for _ in range(4 * MAX_BODY // CHUNK):
            if not await reader.read(CHUNK):
                return


async def read_response(upstream: h11.Connection, reader) -> tuple[int, bytes]:
    """Docker's answer to an attach: 101, or a status and its (small) body."""
    status, body = 0, bytearray()
    while True:
        event = upstream.next_event()
        if event is h11.NEED_DATA:
            upstream.receive_data(await reader.read(CHUNK))
        elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return 101, b""
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data) and len(body) < MAX_BODY:
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status or 502, bytes(body)


async def relay(source, sink, first: bytes, end_with_eof: bool) -> None:
    """Copy one direction of an upgraded connection until its end."""
    with contextlib.suppress(OSError):
        sink.write(first)
        while data := await source.read(CHUNK):
            sink.write(data)
            await sink.drain()
        if end_with_eof and sink.can_write_eof():
            sink.write_eof()  # the caller closed stdin: so does the container


async def respond(conn, writer, status: int, content, kind="application/json", head=False) -> None:
    content = json.dumps(content) if isinstance(content, dict) else content
    content = content.encode() if isinstance(content, str) else content
    empty = status in (204, 304)  # no body, no length
    headers = [] if empty else [("content-type", kind), ("content-length", str(len(content)))]
    send(writer, conn, h11.Response(status_code=status, headers=headers))
    if content and not (head or empty):
        send(writer, conn, h11.Data(data=content))
    send(writer, conn, h11.EndOfMessage())
    await writer.drain()


async def main(settings: Settings) -> None:
    guard = Guard(settings)
    server = await asyncio.start_server(guard.serve, settings.GUARD_HOST, settings.GUARD_PORT)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    asyncio.run(main(Settings()))
