"""Who may do what, and how much (docs/05, "The other routes and their errors"): owner tokens and
their cookie, per-client caps on runs and event streams, the Host check and ALLOWED_MODELS. Each
is a FastAPI dependency the lesson's routes use, or a collaborator its Orchestrator calls."""

import hmac
from collections import Counter
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from research_agent import ApiError, token_hash

# What uuid.uuid4().hex makes, and nothing else: no `:` can ever reach a Redis key name.
RUN_ID = r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}$"
RunId = Annotated[str, PathParam(pattern=RUN_ID, description="a run id: 32 hex digits (uuid4)")]

# A run belongs to whoever created it: POST /v1/runs returns an owner token, and every other route
# of the run asks for it, as `Authorization: Bearer` or as the cookie that POST sets for the page
# (EventSource cannot send a header; the browser sends the cookie itself).
TOKEN_COOKIE = "run_token"
bearer = HTTPBearer(auto_error=False, description="the `owner_token` of the run")
cookie = APIKeyCookie(name=TOKEN_COOKIE, auto_error=False, description="set by POST /v1/runs")


async def owned(
    run_id: RunId,
    request: Request,
    header: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    from_cookie: Annotated[str | None, Depends(cookie)],
) -> str:
    """The run's id, once the caller has shown the run's owner token."""
    owner = await request.app.state.orchestrator.runs.owner(run_id)
    if owner is None:
        raise ApiError(404, "run_not_found", f"no run {run_id} (it may have expired)")
    token = header.credentials if header else from_cookie
    if token is None:
        message = "send the run's owner_token as `Authorization: Bearer <token>`"
        raise ApiError(401, "owner_token_missing", message, {"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(owner, token_hash(token)):
        raise ApiError(403, "not_run_owner", "this is not the owner token of that run")
    return run_id


OwnedRun = Annotated[str, Depends(owned)]


def owner_cookie(response, token: str, run_id: str, settings) -> None:
    """For the page: only sent to this run's paths, never with a request from another site."""
    response.set_cookie(
        TOKEN_COOKIE,
        token,
        max_age=int(settings.VARIATION_TIMEOUT_SECONDS) + settings.RUN_TTL_SECONDS,
        path=f"/v1/runs/{run_id}",
        httponly=True,
        samesite="strict",
    )


def host_check(settings):
    async def trusted_host(request: Request) -> None:
        # DNS rebinding: a page from another site whose name now points at 127.0.0.1 can reach
        # this API, but its requests still carry that name in Host.
        if request.url.hostname not in settings.ALLOWED_HOSTS:
            raise ApiError(400, "untrusted_host", "this API is not served under that host name")

    return trusted_host


def allowed_models(overrides: list, settings) -> None:
    """A model someone pays for: only the listed ones, refused like any invalid field (422)."""
    for i, v in enumerate(overrides):
        if v.model is not None and v.model not in settings.ALLOWED_MODELS:
            allowed = ", ".join(settings.ALLOWED_MODELS)
            loc, msg = ("body", "overrides", i, "model"), f"allowed models: {allowed}"
            raise RequestValidationError([{"loc": loc, "msg": msg, "type": "model_not_allowed"}])


class NoOtherCaps:
    """The lesson's default `caps`: no cap but its own MAX_ACTIVE_RUNS."""

    async def admit(self, active: set[str], client: str) -> None:
        pass


class PerClientCaps:
    """The lesson's Orchestrator's `caps`: once a run slot is free, one client address still
    cannot hold every one (Orchestrator.admit calls admit)."""

    def __init__(self, settings, runs):
        self.settings, self.runs = settings, runs

    async def admit(self, active: set[str], client: str) -> None:
        s = self.settings
        if (await self.runs.clients(active)).count(client) >= s.MAX_RUNS_PER_CLIENT:
            message = f"you have {s.MAX_RUNS_PER_CLIENT} runs going; wait for one or cancel one"
            raise ApiError(429, "too_many_client_runs", message, headers={"Retry-After": "5"})


class StreamSlots:
    """Open event streams in this process, in total and per client address."""

    def __init__(self, settings):
        self.settings, self.open = settings, Counter()

    @asynccontextmanager
    async def hold(self, client: str):
        s = self.settings
        if self.open.total() >= s.MAX_STREAMS:
            message = f"{s.MAX_STREAMS} event streams are open; try again shortly"
            raise ApiError(503, "too_many_streams", message, headers={"Retry-After": "5"})
        if self.open[client] >= s.MAX_STREAMS_PER_CLIENT:
            message = f"you have {s.MAX_STREAMS_PER_CLIENT} event streams open; close one first"
            raise ApiError(429, "too_many_streams", message, headers={"Retry-After": "5"})
        self.open[client] += 1
        try:
            yield
        finally:
            self.open[client] -= 1
            if not self.open[client]:
                del self.open[client]


async def stream_slot(request: Request):
    """Held for as long as the event stream is open (FastAPI ends it after the response)."""
    async with request.app.state.stream_slots.hold(request.client.host):
        yield
