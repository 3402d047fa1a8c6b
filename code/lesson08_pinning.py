"""Lesson 08, going further: pinning what each tool server declares.

A model reads a tool's name, description and input schema as instructions. A server that changes
them after you reviewed it (a "rug pull") changes what your agent does without a deploy. The
gateway records a hash of each tool the first time it sees it; a tool whose hash differs later is
refused, with a clear error, until the operator removes its pin (`python code/08_mcp_gateway.py
repin SERVER`) after reading the new text.

Descriptions that talk to the model ("ignore previous instructions", "do not tell the user") are
flagged: pinned, logged, listed at GET /pins, and withheld from clients until the server's catalog
entry lists the tool under `reviewed:`. A regex is a tripwire for the operator, not a boundary.
"""

import hashlib
import json
import logging
import re
import threading
import time
from pathlib import Path

from fastmcp.client.messages import MessageHandler
from fastmcp.server.providers.proxy import ProxyProvider

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
    """What the model will read about a tool: its name, description and input schema."""
    return {"name": tool.name, "description": tool.description or "", "schema": tool.parameters}


def tool_hash(tool) -> str:
    return hashlib.sha256(json.dumps(declaration(tool), sort_keys=True).encode()).hexdigest()


class Pins:
    """{server: {tool: {sha256, description, flagged}}} in a JSON file the gateway owns."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, dict[str, dict]] = (
            json.loads(self.path.read_text()) if self.path.exists() else {}
        )
        self.refused: dict[str, str] = {}  # tool name -> why, as the client will read it
        self._lock = threading.Lock()

    def check(self, server: str, tools: list, reviewed: list[str]) -> list:
        """The tools that match their pin (pinning new ones); records why the others are refused."""
        accepted, pins, changed = [], self.data.setdefault(server, {}), False
        for tool in tools:
            digest, pin = tool_hash(tool), pins.get(tool.name)
            if pin is None:
                flagged = bool(SUSPICIOUS.search(json.dumps(declaration(tool))))
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
                    "changed since it was pinned (description or "
                    f"schema); refused until the operator re-pins server {server!r}",
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

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
            tmp.replace(self.path)

    def repin(self, server: str) -> None:
        self.data.pop(server, None)
        self.save()


class PinnedProxyProvider(ProxyProvider):
    """FastMCP's proxy to one server, whose tool list passes through the pins.

    A listing (tools/list) fetches the server's tools and checks them. A call finds its tool in the
    last checked list; when that check is older than `ttl` seconds (0: at every call) the list is
    fetched and checked again first, on the same kept session: a tool changed since the last
    listing is refused, and never runs. A server's tools/list_changed notification expires the
    check at once (expire()).
    """

    def __init__(self, client_factory, *, server: str, pins: Pins, reviewed: list[str], ttl=0.0):
        super().__init__(client_factory, cache_ttl=float("inf"))  # _get_tool decides when
        self.server, self.pins, self.reviewed, self.ttl = server, pins, reviewed, ttl
        self._listed: set[str] = set()  # every name the server declared, refused ones included
        self._checked_at = float("-inf")

    async def _list_tools(self):
        self._checked_at = time.monotonic()
        tools = await super()._list_tools()
        self._listed = {t.name for t in tools}
        accepted = self.pins.check(self.server, list(tools), self.reviewed)
        self._tools_cache.items = accepted  # a call looks its tool up here: refused ones are gone
        return accepted

    def expire(self) -> None:
        self._checked_at = float("-inf")

    async def _get_tool(self, name, version=None):
        if self._tools_cache is not None and name not in self._listed:
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
