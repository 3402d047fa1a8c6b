"""Lesson 08, going further: pinning what each tool server declares.

A model reads a tool's name, description and input schema as instructions, and a client shows its
title and annotations: everything a server declares about a tool is read by someone. A server that
changes it after you reviewed it (a "rug pull") changes what your agent does without a deploy. The
gateway records a hash of each tool's whole declaration (canonical JSON of what the server sent:
name, title, description, input and output schemas, annotations, icons, `_meta`, ...) the first
time it sees it; a tool whose hash differs later is refused, with a clear error, until the operator
re-pins the server (`.venv/bin/python -m lesson08.mcp_gateway repin SERVER`, which asks the running
gateway) after reading the new text.

Declarations that talk to the model ("ignore previous instructions", "do not tell the user") are
flagged: pinned, logged, listed at GET /pins, and withheld from clients until the server's catalog
entry lists the tool under `reviewed:`. The check reads the text after Unicode normalisation
(NFKC, invisible format characters dropped, any run of whitespace one space), so a no-break space
or a zero-width joiner does not hide a phrase. A regex is a tripwire for the operator, not a
boundary.
"""

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from pathlib import Path

from fastmcp.client.messages import MessageHandler
from fastmcp.exceptions import ToolError
from fastmcp.server.providers.proxy import ProxyProvider, ProxyTool, _CacheEntry
from mcp.shared.exceptions import MCPError

logger = logging.getLogger("mcp_gateway")
# What a client reads when it calls a changed tool (the sentence lesson 08's step 5 gives it): the
# server and what changed are in the log line and at GET /pins, for the operator.
CHANGED = "Tool {tool!r} changed since it was pinned; refused until re-pinned."

SUSPICIOUS = re.compile(
    r"ignore (all |any )?(the )?(previous|prior|above|earlier) (instructions|messages)"
    r"|disregard (the )?(previous|prior|above|system)"
    r"|do not (tell|inform|mention)[^.]{0,40}user"
    r"|<\s*(important|system|instructions?)\s*>"
    r"|system prompt|~/\.ssh|id_rsa|api[_ ]?key",
    re.IGNORECASE,
)


def declaration(tool) -> dict:
    """Everything the server declared about a tool (an MCP `Tool`), as it sent it."""
    return tool.model_dump(mode="json", by_alias=True, exclude_none=True)


def tool_hash(tool) -> str:
    canonical = json.dumps(
        declaration(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def normalised(text: str) -> str:
    """NFKC (a no-break space becomes a space), format characters (zero-width) dropped, every run
    of whitespace one space."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return " ".join(text.split())


def texts(value):
    """Every string of a declaration, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)


def reads_like_instructions(tool) -> bool:
    return bool(SUSPICIOUS.search(normalised(" ".join(texts(declaration(tool))))))


class Pins:
    """{server: {tool: {sha256, description, flagged}}} in a JSON file the gateway owns."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None  # None: SharedPins, in Redis
        self.data: dict[str, dict[str, dict]] = (
            json.loads(self.path.read_text()) if self.path and self.path.exists() else {}
        )
        # Keyed by tool name: the catalog gives each name to one server (lesson08.catalog), and a
        # server's declaration of another's name is withheld before it is checked, never refused.
        self.refused: dict[str, str] = {}  # tool name -> why, as the client will read it
        self.refused_server: dict[str, str] = {}  # tool name -> its server
        self.withheld: dict[str, list[str]] = {}  # server -> what it declared beyond its catalog
        self._lock = threading.Lock()

    async def load(self, server: str, tools: list) -> None:
        """Before a check: the pins as the store has them now. A file has one writer, this
        process, so what it holds is current (SharedPins reads Redis here)."""

    async def forget(self, server: str) -> None:
        """The operator's re-pin."""
        self.repin(server)

    async def current(self) -> dict[str, dict[str, dict]]:
        """Every server's pins, for GET /pins."""
        return self.data

    def provided(self, server: str, tools: list, allowed: list[str]) -> list:
        """The declared tools the catalog gives this server; the others are withheld, unpinned:
        a server that declares another's tool (shadowing) or a new one is never served for it."""
        beyond = sorted(t.name for t in tools if t.name not in allowed)
        if beyond != self.withheld.get(server, []):
            event = {"event": "tools_withheld", "server": server, "tools": beyond[:20]}
            logger.warning(json.dumps({**event, "reason": "not listed for this server"}))
        if beyond:
            self.withheld[server] = beyond
        else:
            self.withheld.pop(server, None)
        return [t for t in tools if t.name in allowed]

    def check(self, server: str, tools: list, reviewed: list[str]) -> list:
        """The tools that match their pin (pinning new ones); records why the others are refused."""
        accepted, pins, changed = [], self.data.setdefault(server, {}), False
        for tool in tools:
            digest, pin = tool_hash(tool), pins.get(tool.name)
            if pin is None:
                pin = pins[tool.name] = new_pin(tool, digest)
                changed = True
                log_pinned(server, tool.name, pin)
            if pin["sha256"] != digest:
                self._refuse(server, tool.name, CHANGED.format(tool=tool.name))
            elif pin["flagged"] and tool.name not in reviewed:
                self._refuse(
                    server,
                    tool.name,
                    f"Tool {tool.name!r} of server {server!r}: its description reads like "
                    f"instructions to the model; refused until the catalog lists it under "
                    f"{server}.reviewed.",
                )
            else:
                self.refused.pop(tool.name, None)
                self.refused_server.pop(tool.name, None)
                accepted.append(tool)
        if changed:
            self.save()
        return accepted

    def _refuse(self, server: str, tool: str, why: str) -> None:
        """`why` is what the client reads: a whole sentence about the tool."""
        if self.refused.get(tool) != why:
            logger.warning(
                json.dumps({"event": "tool_refused", "server": server, "tool": tool, "reason": why})
            )
        self.refused[tool] = why
        self.refused_server[tool] = server

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
            tmp.replace(self.path)

    def repin(self, server: str) -> None:
        """Forget the server's pins and refusals: its tools are pinned again at the next listing."""
        self.data.pop(server, None)
        for tool in [t for t, s in self.refused_server.items() if s == server]:
            self.refused.pop(tool, None)
            self.refused_server.pop(tool, None)
        self.save()


def new_pin(tool, digest: str) -> dict:
    return {
        "sha256": digest,
        "description": tool.description or "",
        "flagged": reads_like_instructions(tool),
    }


def log_pinned(server: str, tool: str, pin: dict) -> None:
    event = {"event": "tool_pinned", "server": server, "tool": tool}
    logger.warning(json.dumps({**event, "sha256": pin["sha256"][:16], "flagged": pin["flagged"]}))


class SharedPins(Pins):
    """The pins in Redis, for gateway replicas (code/lesson08/replicas.yaml): one hash per
    server, `{prefix}{server}`: tool -> its pin as JSON. Every replica checks against the same
    pins, so a tool one replica refuses the others refuse too.

    - A tool seen for the first time is pinned with HSETNX: when two replicas see a new tool at
      once, the first write wins and both check against it (trust on first use, once).
    - Each check reads the server's hash again (one round trip: the writes and the read in one
      pipeline), so a re-pin made through one replica (it deletes the hash) reaches the others
      at their next check, within GATEWAY_PIN_RECHECK_SECONDS.
    - Refusals stay per replica: each derives them from the same pins and the same server.
    - Redis unreachable: the check fails, and so does the call (closed, not open).
    """

    def __init__(self, url: str, prefix: str = "lesson08:pins:"):
        import redis.asyncio  # only a replicated gateway needs a Redis client

        super().__init__(None)
        self.redis = redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.prefix = prefix

    async def load(self, server: str, tools: list) -> None:
        key = self.prefix + server
        pins = [new_pin(tool, tool_hash(tool)) for tool in tools]
        async with self.redis.pipeline(transaction=False) as pipe:
            for tool, pin in zip(tools, pins, strict=True):
                pipe.hsetnx(key, tool.name, json.dumps(pin, sort_keys=True))
            pipe.hgetall(key)
            *created, stored = await pipe.execute()
        for tool, pin, new in zip(tools, pins, created, strict=True):
            if new:
                log_pinned(server, tool.name, pin)
        self.data[server] = {k.decode(): json.loads(v) for k, v in stored.items()}

    def save(self) -> None:
        pass  # every pin is written to Redis when it is made (load)

    async def forget(self, server: str) -> None:
        await self.redis.delete(self.prefix + server)
        self.repin(server)  # this replica's copy and refusals; the others' at their next check

    async def current(self) -> dict[str, dict[str, dict]]:
        found = {}
        async for key in self.redis.scan_iter(match=self.prefix + "*"):
            server = key.decode().removeprefix(self.prefix)
            stored = await self.redis.hgetall(key)
            found[server] = {k.decode(): json.loads(v) for k, v in stored.items()}
        return found


def pin_store(path: Path, redis_url: str = "") -> Pins:
    """The pins file; with replicas, the Redis they all check against."""
    return SharedPins(redis_url) if redis_url else Pins(path)


class PinnedProxyProvider(ProxyProvider):
    """FastMCP's proxy to one server, whose tool list passes through the pins.

    A check fetches the server's tools and checks what it declared, as it sent it (Pins.check);
    the tools that pass are kept (`pinned`: each one the declaration its pin is the hash of), and a
    call finds its tool there, without asking the server. The server's tools are checked again:

    - at every listing (a client's tools/list): a client never reads a changed declaration;
    - at once, in the background, when the server sends tools/list_changed (changed());
    - on the gateway's timer, every `ttl` seconds, on the kept session (recheck());
    - before a call that finds the last check older than `ttl` (0: before every call).

    A call that comes while a check runs waits for it, so a change that check finds is refused
    and never runs. Between two checks a changed tool still runs under its pinned declaration:
    the window is `ttl` seconds at most, or until the server says it changed. A kept session that
    fails (its container was stopped or crashed) is dropped with `reset(session)`, which closes
    that session only (another request may have opened a new one already), and opened again
    once. A call on a session the last check was not made on (the server started again) checks
    first: a server restarted with other tools is checked before it runs.
    """

    def __init__(
        self,
        client_factory,
        *,
        server: str,
        pins: Pins,
        reviewed: list[str],
        provides: list[str],
        ttl=0.0,
        reset=None,
        kept=None,
    ):
        super().__init__(client_factory, cache_ttl=float("inf"))  # _get_tool decides when
        self.server, self.pins, self.reviewed, self.ttl = server, pins, reviewed, ttl
        self.provides = provides  # the catalog's tools for this server: no other is served
        self.reset = reset
        # The open session, if any, for the timer's check (it starts no server and leaves the
        # server's idle clock alone); None: every check goes through client_factory.
        self.kept = kept
        self.upstream = None  # the server's Upstream, for the fast path (lesson08/fast_calls.py)
        self.visible = None  # visible(tools): may this request's caller see any of them?
        # Every name the server declared that the catalog gives it, refused ones included.
        self.listed: set[str] = set()
        self.pinned: dict[str, object] = {}  # the accepted declarations (MCP `Tool`s), by name
        self._checked_at = float("-inf")
        self._check: asyncio.Future | None = None  # the check running now, shared
        self.checked_on = None  # the session the last check listed on

    async def _declared(self, client) -> list:
        async with client:
            return await client.list_tools()  # MCP `Tool`s, as the server sent them

    async def _list_tools(self, client=None):
        started, timer = time.monotonic(), client is not None
        client = client or await self._get_client()  # (starts the server if it is not running)
        try:
            declared = await self._declared(client)
        except Exception:
            # The session died: its server is gone, or a new one answers 404 to the old session
            # ("Session terminated"). It is dropped; a listing opens a new one (starting the
            # server), once. The timer's check does not: the next use opens it.
            if self.reset is None or not await self.reset(client) or timer:
                raise
            client = await self._get_client()
            declared = await self._declared(client)
        declared = self.pins.provided(self.server, declared, self.provides)
        self.listed = {t.name for t in declared}
        await self.pins.load(self.server, declared)  # the shared store's pins, when there is one
        accepted = self.pins.check(self.server, declared, self.reviewed)
        self.pinned = {t.name: t for t in accepted}
        tools = [PinnedTool.from_mcp_tool(self.client_factory, t) for t in accepted]
        for tool in tools:
            tool._provider = self
        # A call looks its tool up here: refused ones are gone.
        self._tools_cache = _CacheEntry(tools, time.monotonic())
        self._checked_at = started  # a check that failed leaves the last one's time
        self.checked_on = client
        return tools

    def _start_check(self, client=None) -> asyncio.Future:
        """The check running now, or a new one: calls at once share one listing."""
        if self._check is None or self._check.done():
            listing = self._list_tools(client) if client is not None else self._list_tools()
            self._check = asyncio.ensure_future(listing)
            self._check.add_done_callback(_retrieved)  # a failure is the waiters' to see
        return self._check

    async def check(self, client=None):
        """Check the server's tools now (or wait for the check running), and return them."""
        # Shielded: a caller that gives up does not cancel a check others wait for.
        return await asyncio.shield(self._start_check(client))

    def expire(self) -> None:
        self._checked_at = float("-inf")

    def changed(self) -> None:
        """The server's tools/list_changed: its tools are checked again at once, in the
        background (this runs in the session's receive loop, which must not wait for an
        answer it is the one to read)."""
        self.expire()
        self._start_check()

    async def recheck(self) -> bool:
        """The timer's check: only a server that is running (an open kept session), without
        touching its idle clock. False when nothing was checked: no session, or one that had
        died (the server stopped), which is dropped; the next use opens a new one and checks
        before it calls."""
        client = self.kept() if self.kept is not None else None
        if client is None:
            return False  # not running: checked before its first call when it starts again
        try:
            await self.check(client)
        except Exception:
            return False  # dropped in _list_tools (reset), and checked again before a call
        return True

    async def list_tools(self):
        """A client's listing: the server's checked tools. A server that would have to be
        started for it (an on-demand container not running) is not, when the caller may see none
        of its tools (`visible`, the gateway's allow-lists): an agent that may call one tool
        does not start every server at its first listing. A running server is asked whoever
        lists, so what it declares beyond its catalog entry is still found and withheld."""
        if (
            self.visible is not None
            and self.upstream is not None
            and not self.upstream.running()
            and not self.visible(self.provides)
        ):
            return []
        return await super().list_tools()

    def fresh(self, name: str, session) -> bool:
        """Whether a call of `name` on `session` may run on what the last check found, as
        _get_tool and PinnedTool.run would let it (the fast path asks, lesson08/fast_calls.py):
        no check running or due, the tool pinned, and the session the one that check listed on."""
        return (
            not self._checking()
            and not self._due()
            and name in self.pinned
            and session is not None
            and session is self.checked_on
        )

    def _checking(self) -> bool:
        """A check is running now."""
        return self._check is not None and not self._check.done()

    def _due(self) -> bool:
        """No check yet, or the last is `ttl` seconds old: the next call checks first."""
        return self._tools_cache is None or time.monotonic() - self._checked_at >= self.ttl

    async def _get_tool(self, name, version=None):
        if name not in self.provides or (self._tools_cache is not None and name not in self.listed):
            return None  # another server's tool: this one is not asked
        if self._checking():
            try:  # a check is running: its answer decides
                await asyncio.shield(self._check)
            except Exception:  # it failed (the timer's, on a session that died): check anew
                await self.check()
        elif self._due():
            await self.check()  # checked before the call: a changed tool never runs
        return await super()._get_tool(name, version)  # from the last checked list


class PinnedTool(ProxyTool):
    """A pinned tool's proxy: it runs on the session its server's last check listed on. On
    another one (the kept session was opened again: the server may have restarted with other
    tools) the server's tools are checked first; a session the server no longer knows ("Session
    terminated": it ran nothing) is opened again, checked, and the call made once more."""

    _provider: "PinnedProxyProvider | None" = None

    async def run(self, arguments, context=None):
        provider = self._provider
        for attempt in (1, 2):
            client = await self._get_client()
            if provider is not None and client is not provider.checked_on:
                await provider.check()
                if self.name not in provider.pinned:
                    why = provider.pins.refused.get(self.name)
                    raise ToolError(why or f"Tool {self.name!r} is no longer declared.")
                client = await self._get_client()  # the session that check listed on
            try:
                return await super().run(arguments, context)
            except MCPError as exc:
                gone = "Session terminated" in str(exc)
                if (
                    attempt == 2
                    or not gone
                    or provider is None
                    or provider.reset is None
                    or not await provider.reset(client)
                ):
                    # The server's error (or the gateway's, for its connection), said as it is:
                    # a tool error, not a traceback in the gateway's log.
                    raise ToolError(str(exc)) from None


def _retrieved(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class ListChanged(MessageHandler):
    """The gateway's client to a server: its tools/list_changed starts a check of its pins."""

    provider: PinnedProxyProvider | None = None

    async def on_tool_list_changed(self, message) -> None:
        if self.provider is not None:
            self.provider.changed()
