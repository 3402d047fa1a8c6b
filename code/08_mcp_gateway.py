"""Lesson 08: one MCP endpoint for the agent, in front of tool servers that run elsewhere.

Run it:  make lesson-08     (in Compose, with the agent; tool servers start on demand)
  or:    .venv/bin/python code/08_mcp_gateway.py          (servers from GATEWAY_CATALOG)
         .venv/bin/python code/08_mcp_gateway.py repin notes    (accept a server's changed tools)

Endpoints:
  POST/GET /mcp      Streamable HTTP: the tools of every catalog server, as this client may see them
  GET  /health       the gateway answers
  GET  /pins         what each server declared when it was pinned, and what is refused now
  GET  /metrics      Prometheus: calls, errors and durations per tool
"""

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import uvicorn
from fastmcp import Client, FastMCP
from fastmcp.client.transports import StreamableHttpTransport
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_settings import BaseSettings
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# The course's error shape comes from the research agent (research-agent/ holds the `app` package),
# added once so loading this file twice does not grow sys.path.
AGENT_DIR = str(Path(__file__).resolve().parents[1] / "research-agent")
if AGENT_DIR not in sys.path:
    sys.path.insert(0, AGENT_DIR)
from lesson08_catalog import load_catalog  # noqa: E402
from lesson08_launcher import DockerLauncher, UrlLauncher  # noqa: E402
from lesson08_limits import REGISTRY, BurstGuard, CallPolicy, capped_client_factory  # noqa: E402
from lesson08_pinning import ListChanged, PinnedProxyProvider, Pins  # noqa: E402

# One JSON line per event on stdout, from the gateway's own logger only (not every HTTP request).
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
logger = logging.getLogger("mcp_gateway")
logger.setLevel(logging.INFO)
REPO = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8086
    GATEWAY_CATALOG: Path = REPO / "deploy" / "lesson08" / "catalog.yaml"
    GATEWAY_PINS: Path = REPO / "deploy" / "lesson08" / "pins.json"
    GATEWAY_CALL_TIMEOUT_SECONDS: float = 15.0
    GATEWAY_MAX_RESULT_BYTES: int = 1_000_000
    GATEWAY_MAX_IN_FLIGHT: int = 32  # MCP requests at once, all clients: 503 beyond
    GATEWAY_MAX_IN_FLIGHT_PER_CLIENT: int = 8  # per client: 429 beyond
    # How long a server's checked tool list is trusted; 0: it is fetched and checked again at
    # every call, before the call (lesson08_pinning), so a changed tool is refused and never runs.
    GATEWAY_PIN_RECHECK_SECONDS: float = 0.0
    # On-demand containers (catalog entries with `image:`): the owner label and the networks.
    GATEWAY_OWNER: str = "lesson08"
    GATEWAY_TOOLS_NETWORK: str = "lesson08_tools"
    GATEWAY_INTERNET_NETWORK: str | None = None
    GATEWAY_IDLE_SWEEP_SECONDS: float = 30.0
    # Browsers may reach the gateway only from these origins (fnmatch patterns); Host likewise.
    GATEWAY_ALLOWED_ORIGINS: str = "http://127.0.0.1:*,http://localhost:*"
    GATEWAY_ALLOWED_HOSTS: str = "127.0.0.1:*,localhost:*"


def split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_gateway(settings: Settings):
    """The gateway: one FastMCP server whose tools are proxies to each catalog server."""
    catalog = load_catalog(settings.GATEWAY_CATALOG)
    pins = Pins(settings.GATEWAY_PINS)
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
    gateway = FastMCP(
        "lesson08-gateway",
        middleware=[
            CallPolicy(
                catalog,
                pins,
                timeout=settings.GATEWAY_CALL_TIMEOUT_SECONDS,
                max_result_bytes=settings.GATEWAY_MAX_RESULT_BYTES,
            )
        ],
    )
    sessions: dict[str, Client] = {}  # one MCP session per server, kept open and shared

    for entry in catalog.servers:
        lock = asyncio.Lock()  # two first calls at once open one session
        changed = ListChanged()  # the server's tools/list_changed: check its pins again

        async def connect(entry=entry, lock=lock, changed=changed) -> Client:
            async with lock:
                client = sessions.get(entry.name)
                if client is None or not client.is_connected():
                    url = entry.url or await launcher.url_for(entry)  # starts it if needed
                    transport = StreamableHttpTransport(
                        url,
                        httpx_client_factory=capped_client_factory(
                            settings.GATEWAY_MAX_RESULT_BYTES
                        ),
                    )
                    client = sessions[entry.name] = Client(transport, message_handler=changed)
                    await client.__aenter__()
            launcher.touch(entry)
            return client

        changed.provider = PinnedProxyProvider(
            connect,
            server=entry.name,
            pins=pins,
            reviewed=entry.reviewed,
            ttl=settings.GATEWAY_PIN_RECHECK_SECONDS,
        )
        gateway.add_provider(changed.provider)
    return gateway, catalog, pins, launcher


def build_app(settings: Settings):
    gateway, catalog, pins, launcher = build_gateway(settings)

    @gateway.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "servers": [s.name for s in catalog.servers]})

    @gateway.custom_route("/pins", methods=["GET"])
    async def show_pins(request: Request) -> JSONResponse:
        return JSONResponse({"pins": pins.data, "refused": pins.refused})

    @gateway.custom_route("/metrics", methods=["GET"])
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app = gateway.http_app(
        path="/mcp",
        host_origin_protection=True,  # a foreign Origin gets 403, an unknown Host 421
        allowed_origins=split(settings.GATEWAY_ALLOWED_ORIGINS),
        allowed_hosts=split(settings.GATEWAY_ALLOWED_HOSTS),
        middleware=[
            Middleware(
                BurstGuard,
                clients=catalog.clients,
                per_client=settings.GATEWAY_MAX_IN_FLIGHT_PER_CLIENT,
                total=settings.GATEWAY_MAX_IN_FLIGHT,
            )
        ],
    )
    return app, catalog, launcher


@contextlib.asynccontextmanager
async def idle_sweep(catalog, launcher, every: float):
    """Stop on-demand containers that nobody used for a while; remove all of them on the way out."""

    async def loop():
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(launcher.stop_idle, catalog)
            except Exception as exc:  # Docker away for a moment: try again next round
                logger.warning(f'{{"event": "idle_sweep_failed", "error": "{type(exc).__name__}"}}')

    task = asyncio.create_task(loop()) if isinstance(launcher, DockerLauncher) else None
    try:
        yield
    finally:
        if task:
            task.cancel()
        await launcher.close()


async def serve(settings: Settings) -> None:
    app, catalog, launcher = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.HOST,
        port=settings.PORT,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    async with idle_sweep(catalog, launcher, settings.GATEWAY_IDLE_SWEEP_SECONDS):
        await uvicorn.Server(config).serve()


if __name__ == "__main__":
    settings = Settings()
    if sys.argv[1:2] == ["repin"]:
        Pins(settings.GATEWAY_PINS).repin(sys.argv[2])
        print(
            f"removed the pins of {sys.argv[2]!r}: its tools are pinned again at the next listing"
        )
    else:
        asyncio.run(serve(settings))
