"""Lesson 08: one MCP endpoint for the agent, in front of tool servers that run elsewhere.

Run it:  make lesson-08     (in Compose, with the agent; tool servers start on demand)
  or:    make lesson-08-replicas   (two stateless replicas behind HAProxy, pins in Redis)
  or:    .venv/lesson08/bin/python -m lesson08.mcp_gateway          (servers from GATEWAY_CATALOG)
         .venv/lesson08/bin/python -m lesson08.mcp_gateway repin notes   (the running gateway
                                        accepts a server's changed tools: POST /pins/notes/repin)

Endpoints:
  POST /mcp          Streamable HTTP, stateless: the tools of every catalog server, as this client
                     may see them. A 2026-07-28 request stands alone; a handshake-era client (the
                     agent's mcp 1.x) is answered on its initialize too, and no session is kept.
  GET  /health       the gateway answers (nothing more: anyone may ask)
The operator's, with `Authorization: Bearer $GATEWAY_OPERATOR_TOKEN` (no token set: refused):
  GET  /pins         what each server declared when it was pinned, and what is refused now
  POST /pins/{server}/repin   forget a server's pins; its tools are pinned again at once
  GET  /metrics      Prometheus: calls, errors and durations per tool
"""

import asyncio
import contextlib
import importlib
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import NamedTuple

import uvicorn
import uvloop
from fastmcp import FastMCP
from pydantic_settings import BaseSettings
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse

from lesson08.call_limits import BurstGuard, CallPolicy, withhold_anonymous_meta
from lesson08.catalog import Catalog, load_catalog
from lesson08.fast_calls import FastCalls
from lesson08.launcher import DockerLauncher, UrlLauncher
from lesson08.operator_endpoints import OperatorEndpoints, repin_on_the_running_gateway
from lesson08.pinning import PinnedProxyProvider, Pins, pin_store
from lesson08.transport import split
from lesson08.upstream import Upstream

# One JSON line per event on stdout, from the gateway's own logger only (not every HTTP request).
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
logger = logging.getLogger("mcp_gateway")
logger.setLevel(logging.INFO)
REPO = Path(__file__).resolve().parents[2]
# What the first call to a server imports (the upstream client's transport, the SDK's check of a
# result's schema, FastMCP's schema tools; found with PYTHONPROFILEIMPORTTIME=1): imported at
# start-up instead, before /health answers, so that a tool's first use does not wait for them.
FIRST_CALL_IMPORTS = (
    "httpcore2",
    "jsonschema",
    "jsonref",
    "fastmcp.utilities.json_schema",
    "fastmcp.server.providers.prefab_payload",
    "fastmcp.server.providers.prefab_synthesis",
    "fastmcp.server.sessions",
)


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8086
    GATEWAY_CATALOG: Path = REPO / "code" / "lesson08" / "catalog.yaml"
    GATEWAY_PINS: Path = REPO / "code" / "lesson08" / "pins.json"
    # Replicas behind an edge (code/lesson08/replicas.yaml): the pins in one Redis that every
    # replica checks against (lesson08.pinning.SharedPins), instead of the file above.
    GATEWAY_PINS_REDIS_URL: str = ""
    # One of several replicas behind an edge (any replica answers any request: none keeps a
    # session): each call log line then names the replica (its host name: the container's id).
    GATEWAY_REPLICAS: bool = False
    GATEWAY_CALL_TIMEOUT_SECONDS: float = 15.0
    GATEWAY_MAX_RESULT_BYTES: int = 1_000_000
    GATEWAY_MAX_IN_FLIGHT: int = 32  # MCP requests at once, all clients: 503 beyond
    GATEWAY_MAX_IN_FLIGHT_PER_CLIENT: int = 8  # per client: 429 beyond
    GATEWAY_MAX_CALLS_PER_CLIENT: int = 4  # tool calls running at once per client; more wait
    # The operator's bearer token for /pins, /metrics and re-pinning; empty: nobody gets them.
    GATEWAY_OPERATOR_TOKEN: str = ""
    # Where `repin` finds the running gateway and its operator token (make lesson-08 writes it).
    GATEWAY_URL: str = ""
    GATEWAY_OPERATOR_TOKEN_FILE: Path = REPO / "code" / "lesson08" / "operator-token"
    # How often each running server's tools are checked against their pins on a timer (they are
    # checked at every listing and at the server's tools/list_changed too), and how old a check a
    # call may rely on: the longest a changed tool still runs under its pinned declaration
    # (lesson08.pinning). 0: checked again before every call, a listing per call.
    GATEWAY_PIN_RECHECK_SECONDS: float = 5.0
    # On-demand containers (catalog entries with `image:`): the owner label and the networks.
    GATEWAY_OWNER: str = "lesson08"
    GATEWAY_TOOLS_NETWORK: str = "lesson08_tools"
    GATEWAY_INTERNET_NETWORK: str | None = None
    GATEWAY_IDLE_SWEEP_SECONDS: float = 30.0
    # Browsers may reach the gateway only from these origins (fnmatch patterns); Host likewise.
    GATEWAY_ALLOWED_ORIGINS: str = "http://127.0.0.1:*,http://localhost:*"
    GATEWAY_ALLOWED_HOSTS: str = "127.0.0.1:*,localhost:*"
    # A call with nothing left to decide goes straight to its server (lesson08/fast_calls.py),
    # under the same rules; false: every request takes FastMCP's full path.
    GATEWAY_FAST_CALLS: bool = True
    # At SIGTERM, how long /health answers 503 while calls are still served, before the port
    # closes (DrainingServer): time for an edge's health checks to stop sending here. 0: none
    # (one gateway, nothing in front of it polling /health).
    GATEWAY_SHUTDOWN_DRAIN_SECONDS: float = 0.0


class Gateway(NamedTuple):
    """What build_gateway makes: the MCP server, and what the operator's routes and the idle
    sweep reach through it."""

    server: FastMCP
    catalog: Catalog
    pins: Pins
    launcher: DockerLauncher | UrlLauncher
    providers: dict[str, PinnedProxyProvider]


def build_gateway(settings: Settings) -> Gateway:
    """The gateway: one FastMCP server whose tools are proxies to each catalog server."""
    catalog = load_catalog(settings.GATEWAY_CATALOG)
    pins = pin_store(settings.GATEWAY_PINS, settings.GATEWAY_PINS_REDIS_URL)
    needs_docker = any(entry.image for entry in catalog.servers)
    launcher = (
        DockerLauncher(
            owner=settings.GATEWAY_OWNER,
            network=settings.GATEWAY_TOOLS_NETWORK,
            internet_network=settings.GATEWAY_INTERNET_NETWORK,
        )
        if needs_docker
        else UrlLauncher()
    )
    providers: dict[str, PinnedProxyProvider] = {}
    policy = CallPolicy(
        catalog,
        pins,
        timeout=settings.GATEWAY_CALL_TIMEOUT_SECONDS,
        max_result_bytes=settings.GATEWAY_MAX_RESULT_BYTES,
        per_client=settings.GATEWAY_MAX_CALLS_PER_CLIENT,
        known=lambda: set().union(*(p.listed for p in providers.values())),
        replica=socket.gethostname() if settings.GATEWAY_REPLICAS else None,
    )
    gateway = FastMCP("lesson08-gateway", middleware=[policy])
    # Before anything reads the request: a stranger's `_meta` goes no further than the gateway.
    gateway._mcp_server.middleware.insert(0, withhold_anonymous_meta(catalog.clients))
    for entry in catalog.servers:
        upstream = Upstream(entry, launcher, settings.GATEWAY_MAX_RESULT_BYTES)
        upstream.changed.provider = providers[entry.name] = PinnedProxyProvider(
            upstream.connect,
            server=entry.name,
            pins=pins,
            reviewed=entry.reviewed,
            provides=entry.tools,
            ttl=settings.GATEWAY_PIN_RECHECK_SECONDS,
            reset=upstream.reset,
            kept=upstream.kept,
        )
        upstream.changed.provider.upstream = upstream  # the fast path's way to the server
        upstream.changed.provider.visible = policy.sees_any
        gateway.add_provider(upstream.changed.provider)

    def input_schema(name: str):
        """A called tool's schema, from its pinned declaration. The SDK checks a 2026-07-28
        call's `Mcp-Param-*` headers against it, and without this lookup it lists every tool
        first, which here is a listing of every server: one more round trip per call."""
        pinned = [p.pinned[name] for p in providers.values() if name in p.pinned]
        return pinned[0].input_schema if pinned else None

    gateway._mcp_server.get_tool_input_schema = input_schema
    return Gateway(gateway, catalog, pins, launcher, providers)


async def health(request: Request) -> JSONResponse:
    if request.app.state.draining:  # stopping: an edge sends calls elsewhere
        return JSONResponse({"status": "draining"}, status_code=503)
    return JSONResponse({"status": "ok"})  # for health checks: says nothing about the tools


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before its shutdown. At the first SIGTERM, /health answers
    503 and calls are still served for `drain` seconds, while an edge's checks take this replica
    out; then uvicorn closes the port and lets the calls in flight finish. Without the drain, a
    call the edge had just sent (its connection accepted, its request not yet read) is closed
    unanswered at the signal: the caller gets a 502 for a call that never ran."""

    def __init__(self, config: uvicorn.Config, drain: float):
        super().__init__(config)
        self.drain = drain

    async def serve(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()  # set before uvicorn installs its signal handlers
        await super().serve(sockets)

    def handle_exit(self, sig, frame) -> None:
        app = self.config.app
        if self.drain <= 0 or app.state.draining:
            return super().handle_exit(sig, frame)  # a second signal: uvicorn stops at once
        app.state.draining = True
        logger.info(json.dumps({"event": "draining", "seconds": self.drain}))
        # A signal handler may interrupt the loop anywhere: call_soon_threadsafe is the safe door.
        later = super().handle_exit
        self.loop.call_soon_threadsafe(self.loop.call_later, self.drain, later, sig, frame)


def build_app(settings: Settings, layers=()):
    """The gateway's HTTP app. Each of `layers` is given the Gateway before the app is made (how
    lesson 09 adds its spans, from outside this file: lesson08.tracing)."""
    for name in FIRST_CALL_IMPORTS:
        importlib.import_module(name)
    built = build_gateway(settings)
    for layer in layers:
        layer(built)
    gateway, catalog, pins, launcher, providers = built

    gateway.custom_route("/health", methods=["GET"])(health)  # open to anyone
    # /pins, /pins/{server}/repin and /metrics: the operator's (lesson08/operator_endpoints.py)
    timeout = settings.GATEWAY_CALL_TIMEOUT_SECONDS
    OperatorEndpoints(settings.GATEWAY_OPERATOR_TOKEN, pins, providers, timeout).add_to(gateway)

    middleware = [
        Middleware(
            BurstGuard,
            clients=catalog.clients,
            per_client=settings.GATEWAY_MAX_IN_FLIGHT_PER_CLIENT,
            total=settings.GATEWAY_MAX_IN_FLIGHT,
        )
    ]
    if settings.GATEWAY_FAST_CALLS and not layers:  # traced (lesson 09): FastMCP's spans
        policy = next(m for m in gateway.middleware if isinstance(m, CallPolicy))
        fast = Middleware(FastCalls, policy=policy, providers=providers, server=gateway._mcp_server)
        middleware.append(fast)
    app = gateway.http_app(
        path="/mcp",
        json_response=True,  # one JSON answer per request: a proxied call streams nothing
        stateless_http=True,  # no session, in either era: a request names its client each time
        host_origin_protection=True,  # a foreign Origin gets 403, an unknown Host 421
        allowed_origins=split(settings.GATEWAY_ALLOWED_ORIGINS),
        allowed_hosts=split(settings.GATEWAY_ALLOWED_HOSTS),
        middleware=middleware,
    )
    app.state.draining = False  # True from the first SIGTERM on (DrainingServer)
    return app, catalog, launcher, providers


@contextlib.asynccontextmanager
async def idle_sweep(catalog, launcher, providers, every: float):
    """Stop on-demand containers that nobody used for a while; remove all of them on the way out.
    The gateway's kept session to a server is closed first: its next use opens a new one (and
    starts the container again) instead of failing on a dead one."""

    async def sweep():
        for entry in catalog.servers:
            if launcher.idle(entry, time.monotonic()) and await providers[entry.name].reset(
                idle=True
            ):
                await launcher.retire(entry)

    async def loop():
        while True:
            await asyncio.sleep(every)
            try:
                await sweep()
            except Exception as exc:  # Docker away for a moment: try again next round
                logger.warning(f'{{"event": "idle_sweep_failed", "error": "{type(exc).__name__}"}}')

    task = asyncio.create_task(loop()) if isinstance(launcher, DockerLauncher) else None
    try:
        yield
    finally:
        if task:
            task.cancel()
        await launcher.close()


@contextlib.asynccontextmanager
async def pin_checks(providers, every: float, timeout: float):
    """Every `every` seconds, each running server's tools are listed and checked against their
    pins (a server not running is checked when it starts): a changed tool is refused from then
    on, whether or not anyone lists the tools. 0: no timer, each call checks first."""

    async def loop():
        while True:
            await asyncio.sleep(every)
            for provider in providers.values():
                try:
                    await asyncio.wait_for(provider.recheck(), timeout)
                except Exception as exc:  # its next call checks (and opens a session) again
                    event = {"event": "pin_check_failed", "server": provider.server}
                    logger.warning(json.dumps({**event, "error": type(exc).__name__}))

    task = asyncio.create_task(loop()) if every > 0 else None
    try:
        yield
    finally:
        if task:
            task.cancel()


async def serve(settings: Settings, layers=()) -> None:
    app, catalog, launcher, providers = build_app(settings, layers)
    config = uvicorn.Config(
        app,
        host=settings.HOST,
        port=settings.PORT,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    async with (
        idle_sweep(catalog, launcher, providers, settings.GATEWAY_IDLE_SWEEP_SECONDS),
        pin_checks(
            providers, settings.GATEWAY_PIN_RECHECK_SECONDS, settings.GATEWAY_CALL_TIMEOUT_SECONDS
        ),
    ):
        await DrainingServer(config, settings.GATEWAY_SHUTDOWN_DRAIN_SECONDS).serve()


if __name__ == "__main__":
    settings = Settings()
    if sys.argv[1:2] == ["repin"] and len(sys.argv) == 3:
        sys.exit(repin_on_the_running_gateway(settings, sys.argv[2]))
    uvloop.run(serve(settings))  # uvloop's event loop, as uvicorn.run picks it when installed
