"""Lesson 08, going further: pinning what each tool server declares.

A model reads a tool's name, description and input schema as instructions, and a client shows its
title and annotations: everything a server declares about a tool is read by someone. A server that
changes it after you reviewed it (a "rug pull") changes what your agent does without a deploy. The
gateway records a hash of each tool's whole declaration (canonical JSON of what the server sent:
name, title, description, input and output schemas, annotations, icons, `_meta`, ...) the first
time it sees it; a tool whose hash differs later is refused, with a clear error, until the operator
re-pins the server (`.venv/bin/python code/08_mcp_gateway.py repin SERVER`, which asks the running
gateway) after reading the new text.

Declarations that talk to the model ("ignore previous instructions", "do not tell the user") are
flagged: pinned, logged, listed at GET /pins, and withheld from clients until the server's catalog
entry lists the tool under `reviewed:`. The check reads the text after Unicode normalisation
(NFKC, invisible format characters dropped, any run of whitespace one space), so a no-break space
or a zero-width joiner does not hide a phrase. A regex is a tripwire for the operator, not a
boundary.
"""

import hashlib
import json
import logging
import re
import threading
import time
import unicodedata
from pathlib import Path

from fastmcp.client.messages import MessageHandler
from fastmcp.server.providers.proxy import ProxyProvider, ProxyTool, _CacheEntry

logger = logging.getLogger("mcp_gateway")

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

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, dict[str, dict]] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )
        self.refused: dict[str, str] = {}  # tool name -> why, as the client will read it
        self.refused_server: dict[str, str] = {}  # tool name -> its server
        self._lock = threading.Lock()

    def check(self, server: str, tools: list, reviewed: list[str]) -> list:
        """The tools that match their pin (pinning new ones); records why the others are refused."""
        accepted, pins, changed = [], self.data.setdefault(server, {}), False
        for tool in tools:
            digest, pin = tool_hash(tool), pins.get(tool.name)
            if pin is None:
                flagged = reads_like_instructions(tool)
                pin = pins[tool.name] = {
                    "sha256": digest,
                    "description": tool.description or "",
                    "flagged": flagged,
                }
                changed = True
                logger.warning(
                    json.dumps(
                        {
                            "event": "tool_pinned",
                            "server": server,
                            "tool": tool.name,
                            "sha256": digest[:16],
                            "flagged": flagged,
                        }
                    )
                )
            if pin["sha256"] != digest:
                self._refuse(
                    server,
                    tool.name,
                    "changed since it was pinned (its declaration: description, schemas, "
                    f"title, annotations or _meta); refused until the operator re-pins server "
                    f"{server!r}",
                )
            elif pin["flagged"] and tool.name not in reviewed:
                self._refuse(
                    server,
                    tool.name,
                    "its description reads like instructions to the "
                    f"model; refused until the catalog lists it under {server}.reviewed",
                )
            else:
                self.refused.pop(tool.name, None)
                self.refused_server.pop(tool.name, None)
                accepted.append(tool)
        if changed:
            self.save()
        return accepted

    def _refuse(self, server: str, tool: str, why: str) -> None:
        if self.refused.get(tool) != why:
            logger.warning(
                json.dumps({"event": "tool_refused", "server": server, "tool": tool, "reason": why})
            )
        self.refused[tool] = f"Tool {tool!r} of server {server!r} is {why}."
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


class PinnedProxyProvider(ProxyProvider):
    """FastMCP's proxy to one server, whose tool list passes through the pins.

    A listing (tools/list) fetches the server's tools and checks what it declared, as it sent it.
    A call finds its tool in the last checked list; when that check is older than `ttl` seconds
    (0: at every call) the list is fetched and checked again first, on the same kept session: a
    tool changed since the last listing is refused, and never runs. A server's
    tools/list_changed notification expires the check at once (expire()). A kept session that
    fails (its container was stopped or crashed) is dropped with `reset()` (True when there was
    one) and opened again once.
    """

    def __init__(
        self, client_factory, *, server: str, pins: Pins, reviewed: list[str], ttl=0.0, reset=None
    ):
        super().__init__(client_factory, cache_ttl=float("inf"))  # _get_tool decides when
        self.server, self.pins, self.reviewed, self.ttl = server, pins, reviewed, ttl
        self.reset = reset
        self.listed: set[str] = set()  # every name the server declared, refused ones included
        self._checked_at = float("-inf")

    async def _declared(self) -> list:
        client = await self._get_client()
        async with client:
            return await client.list_tools()  # MCP `Tool`s, as the server sent them

    async def _list_tools(self):
        self._checked_at = time.monotonic()
        try:
            declared = await self._declared()
        except Exception:
            # A kept session that died: its server is gone, or a new one answers 404 to the old
            # session ("Session terminated"). Open a new one (starting the server), once.
            if self.reset is None or not await self.reset():
                raise  # no session was open: the server could not be reached or started
            declared = await self._declared()
        self.listed = {t.name for t in declared}
        accepted = self.pins.check(self.server, declared, self.reviewed)
        tools = [ProxyTool.from_mcp_tool(self.client_factory, t) for t in accepted]
        # A call looks its tool up here: refused ones are gone.
        self._tools_cache = _CacheEntry(tools, time.monotonic())
        return tools

    def expire(self) -> None:
        self._checked_at = float("-inf")

    async def _get_tool(self, name, version=None):
        if self._tools_cache is not None and name not in self.listed:
            return None  # another server's tool: this one is not asked
        if self._tools_cache is None or time.monotonic() - self._checked_at >= self.ttl:
            await self._list_tools()  # checked before the call: a changed tool never runs
        return await super()._get_tool(name, version)  # from the last checked list


class ListChanged(MessageHandler):
    """The gateway's client to a server: its tools/list_changed expires the server's pin check."""

    provider: PinnedProxyProvider | None = None

    async def on_tool_list_changed(self, message) -> None:
        if self.provider is not None:
            self.provider.expire()
