"""Lesson 08, going further: the operator's endpoints on the gateway (docs/08, "Operator
endpoints").

  GET  /pins                 what each server declared when it was pinned, and what is refused now
  POST /pins/{server}/repin  forget a server's pins; its tools are pinned again at once
  GET  /metrics              Prometheus: calls, errors and durations per tool

Each answers only `Authorization: Bearer $GATEWAY_OPERATOR_TOKEN` (no token set: nobody); anyone
else, a tool container included, gets 401 and learns no tool name. repin_on_the_running_gateway
is the command line's side: `code/lesson08/mcp_gateway.py repin SERVER` asks the running gateway,
so the next call uses the new pins without a restart.
"""

import asyncio
import hmac
import os

import httpx
from fastmcp import FastMCP
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lesson08.call_limits import REGISTRY
from lesson08.launcher import DockerLauncher
from lesson08.pinning import PinnedProxyProvider, Pins
from research_agent import error_body


def repin_seconds(call_timeout: float) -> float:
    """How long a re-pin's listing may take: a server's start, then a call's time."""
    return DockerLauncher.START_SECONDS + call_timeout


def refused() -> JSONResponse:
    message = "This endpoint is the operator's: send Authorization: Bearer <operator token>."
    return JSONResponse(error_body("unauthorized", message), status_code=401)


class OperatorEndpoints:
    """The operator's routes, and what they reach: the pins, and each server's provider."""

    def __init__(
        self, token: str, pins: Pins, providers: dict[str, PinnedProxyProvider], call_timeout: float
    ):
        self.token, self.pins, self.providers = token, pins, providers
        self.repin_seconds = repin_seconds(call_timeout)

    def add_to(self, server: FastMCP) -> None:
        server.custom_route("/pins", methods=["GET"])(self.show_pins)
        server.custom_route("/pins/{server}/repin", methods=["POST"])(self.repin)
        server.custom_route("/metrics", methods=["GET"])(self.metrics)

    def is_operator(self, request: Request) -> bool:
        token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        expected = self.token
        return bool(token and expected) and hmac.compare_digest(token.encode(), expected.encode())

    async def show_pins(self, request: Request) -> JSONResponse:
        if not self.is_operator(request):
            return refused()
        return JSONResponse(
            {
                "pins": await self.pins.current(),
                "refused": self.pins.refused,
                "withheld": self.pins.withheld,
            }
        )

    async def repin(self, request: Request) -> JSONResponse:
        if not self.is_operator(request):
            return refused()
        provider = self.providers.get(request.path_params["server"])
        if provider is None:
            message = f"No server {request.path_params['server'][:64]!r} in the catalog."
            return JSONResponse(error_body("not_found", message), status_code=404)
        await self.pins.forget(provider.server)  # every replica's, with SharedPins
        try:  # pinned again now, from what the server declares (started first if it is not up)
            await asyncio.wait_for(provider._list_tools(), timeout=self.repin_seconds)
        except TimeoutError:
            message = "Pins removed; the server did not list its tools in time."
            return JSONResponse(error_body("timeout", message), status_code=504)
        except Exception as exc:  # not running and cannot start: pinned at its next listing
            message = f"Pins removed; the server did not answer ({type(exc).__name__})."
            return JSONResponse(error_body("upstream_unavailable", message), status_code=502)
        pinned = self.pins.data.get(provider.server, {})
        return JSONResponse(
            {"server": provider.server, "pinned": {t: p["sha256"] for t, p in pinned.items()}}
        )

    async def metrics(self, request: Request) -> Response:
        if not self.is_operator(request):
            return refused()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def repin_on_the_running_gateway(settings, server: str) -> int:
    """`repin SERVER`: ask the running gateway (GATEWAY_URL, else 127.0.0.1:$LESSON08_MCP_PORT or
    PORT) to pin the server's tools again, with the operator's token (GATEWAY_OPERATOR_TOKEN, else
    the file make lesson-08 wrote). No restart: the next call sees the new pins."""
    port = os.environ.get("LESSON08_MCP_PORT") or settings.PORT
    url = settings.GATEWAY_URL or f"http://127.0.0.1:{port}"
    token = settings.GATEWAY_OPERATOR_TOKEN
    if not token and settings.GATEWAY_OPERATOR_TOKEN_FILE.exists():
        token = settings.GATEWAY_OPERATOR_TOKEN_FILE.read_text().strip()
    try:
        answer = httpx.post(
            f"{url}/pins/{server}/repin",
            headers={"Authorization": f"Bearer {token}"},
            # the gateway answers 504 first
            timeout=repin_seconds(settings.GATEWAY_CALL_TIMEOUT_SECONDS) + 15,
        )
    except httpx.HTTPError as exc:
        print(f"no gateway answered at {url} ({type(exc).__name__}): is it running?")
        return 1
    if answer.status_code != 200:
        print(f"the gateway at {url} refused: {answer.status_code} {answer.text}")
        return 1
    for tool, digest in answer.json()["pinned"].items():
        print(f"re-pinned {server}/{tool}: sha256 {digest[:16]}")
    return 0
