"""The later layers' dependencies: who is calling and how much they may spend (docs/02 section 8),
and the service each research request runs, with every layer around its agent.

research_agent/app.py attaches them: `admit` and `count_streams` run before each research route,
and `layered_service` replaces the routes' `get_service` (research_agent/api.py).
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .api import AgentDep, CacheDep, research_stream
from .auth import Caller, fingerprint
from .cache import ScopedAnswers
from .errors import (
    AmbiguousAuthorizationError,
    AppError,
    NotReadyError,
    UnauthorizedError,
    app_error_handler,
    validation_error_handler,
)
from .quotas import Grant, Quotas
from .service import ResearchService
from .settings import Settings
from .shutdown import Shutdown, UntilCut
from .telemetry import STREAMS_OPEN
from .usage import Counted


def get_settings_in_full(request: Request) -> Settings:
    return request.app.state.settings


def get_shutdown(request: Request) -> Shutdown:
    return request.app.state.shutdown


SettingsDep = Annotated[Settings, Depends(get_settings_in_full)]
ShutdownDep = Annotated[Shutdown, Depends(get_shutdown)]


def get_shutdown_cut(shutdown: ShutdownDep) -> asyncio.Event:
    """Set when the shutdown grace is about to run out: open requests must end now."""
    return shutdown.cut


CutDep = Annotated[asyncio.Event, Depends(get_shutdown_cut)]


# --- Who is calling, and how much they may spend -------------------------------------------------

# Where KeyBeforeBodyMiddleware leaves the caller it found, in the request's state.
VERIFIED_CALLER = "verified_caller"
# auto_error=False: a missing key gets our 401 (error shape, WWW-Authenticate), not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="API_KEYS: send `Authorization: Bearer <key>`")


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """401 unless the request carries a known key (when API_KEYS is set), 429 for an address
    that sent too many requests without one (AUTH_FAILURE_LIMIT). The access log names the
    caller (the key's name) or the fingerprint of a wrong key, never a key."""
    verified = getattr(request.state, VERIFIED_CALLER, None)
    if verified is not None:  # checked before the body was read (research_agent/key_before_body.py)
        return verified
    if len(request.headers.getlist("authorization")) > 1:
        raise AmbiguousAuthorizationError()
    token = credentials.credentials if credentials else None
    client = request.client.host if request.client else "unknown"
    api_keys, quotas = request.app.state.api_keys, request.app.state.quotas
    try:
        caller = api_keys.authenticate(token, client)
    except UnauthorizedError:
        # One log line per failure, the access log's: a flood of guesses is not doubled in it.
        request.state.key_fingerprint = fingerprint(token) if token else "none"
        if quotas is not None:
            await quotas.failed_auth(client)
        raise
    if api_keys.enabled and quotas is not None:
        try:
            await quotas.check_auth(client)
        except AppError:
            # A right key from an address over its failures: the log says which key, as a hash.
            request.state.key_fingerprint = fingerprint(token)
            raise
    request.state.caller = caller.id
    return caller


async def validation_error_after_the_key(request: Request, exc: RequestValidationError):
    """FastAPI parses a JSON body before it runs the dependencies: check the key first, so a
    stranger learns nothing about the body the API expects (401 before 422)."""
    if request.url.path.startswith("/v1/"):
        try:
            await get_caller(request, await bearer(request))
        except AppError as error:
            return await app_error_handler(request, error)
    return await validation_error_handler(request, exc)


def get_quotas(request: Request) -> Quotas:
    quotas = request.app.state.quotas
    if quotas is None:
        raise NotReadyError("the agent is still starting")
    return quotas


CallerDep = Annotated[Caller, Depends(get_caller)]
QuotasDep = Annotated[Quotas, Depends(get_quotas)]


async def get_grant(
    response: Response, caller: CallerDep, quotas: QuotasDep
) -> AsyncIterator[Grant]:
    """429 when the caller is over its rate limit or its token budget. Once the response is over,
    what the request reserved of the budget and did not spend goes back (a cached answer, a
    refused stream, a failed run)."""
    grant = await quotas.admit(caller)
    response.headers.update(grant.headers)
    try:
        yield grant
    finally:
        with anyio.CancelScope(shield=True):  # a client that hangs up still gets its refund
            await grant.release()


GrantDep = Annotated[Grant, Depends(get_grant)]


def streams(request: Request) -> bool:
    return request.scope["route"].endpoint is research_stream


async def admit(request: Request, grant: GrantDep, quotas: QuotasDep) -> AsyncIterator[None]:
    """Before each research route: the caller's key, rate limit and budget (get_grant). A stream
    also holds one of the caller's stream slots until its last byte is sent (FastAPI runs the code
    after `yield` once the response is over), or answers 429 when they are all taken."""
    if not streams(request):
        yield
        return
    async with quotas.stream_slot(grant.caller):
        yield


async def count_streams(request: Request) -> AsyncIterator[None]:
    """`research_streams_open`: streams being sent right now."""
    if not streams(request):
        yield
        return
    STREAMS_OPEN.inc()
    try:
        yield
    finally:
        STREAMS_OPEN.dec()


# --- The service, with every layer around the agent ----------------------------------------------


def layered_service(
    agent: AgentDep, cache: CacheDep, settings: SettingsDep, cut: CutDep, grant: GrantDep
) -> ResearchService:
    """Built for each request from the dependencies above, so that a test overriding one of them
    (a failing agent, no cache) reaches the service too. Around the agent, innermost first: its
    tokens counted and charged to the caller's budget (research_agent/usage.py), then the run
    ended when the shutdown grace runs out (research_agent/shutdown.py)."""
    runs = UntilCut(Counted(agent, grant.spend), cut)
    answers = ScopedAnswers(cache, settings, agent, grant.caller.id) if cache is not None else None
    return ResearchService(runs, answers)
