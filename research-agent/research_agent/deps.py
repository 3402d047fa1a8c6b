"""What the routes take, each a FastAPI dependency that declares what it needs.

The core's: the settings, the agent and the cache the app built at start (app.state, set by
research_agent/app.py). The layers': who is calling and how much they may spend (docs/02 section
8), the shutdown cut, and `get_service`, the service each research request runs: the agent inside
every layer, composed from the dependencies it names, so a test that overrides one of them (a
failing agent, no cache) reaches the service too. research_agent/app.py runs `admit` and
`count_streams` before each research route.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse

from .access.caller import bearer, get_caller
from .access.keys import Caller
from .access.quotas import Grant, Quotas
from .access.usage import Counted
from .agent import ResearchAgent
from .cache import ResearchCache, ScopedAnswers
from .observability.metrics import STREAMS_OPEN
from .service import ResearchService
from .settings import Settings
from .until_cut import UntilCut
from .web.errors import (
    AppError,
    NotReadyError,
    api_error_handler,
    validation_error_handler,
)

# --- What the app built at start ------------------------------------------------------------------


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_agent(request: Request) -> ResearchAgent:
    agent = request.app.state.agent
    if agent is None:
        raise NotReadyError("the agent is still starting")
    return agent


def get_cache(request: Request) -> ResearchCache | None:
    return request.app.state.cache  # None without REDIS_URL


def get_cut(request: Request) -> asyncio.Event:
    """Set just before the shutdown grace runs out (research_agent/web/shutdown.py)."""
    return request.app.state.shutdown.cut


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
AgentDep = Annotated[ResearchAgent, Depends(get_agent)]
CacheDep = Annotated[ResearchCache | None, Depends(get_cache)]
CutDep = Annotated[asyncio.Event, Depends(get_cut)]

# --- Who is calling, and how much they may spend --------------------------------------------------


async def validation_error_after_the_key(request: Request, exc: RequestValidationError):
    """FastAPI parses a JSON body before it runs the dependencies: check the key first, so a
    stranger learns nothing about the body the API expects (401 before 422)."""
    if request.url.path.startswith("/v1/"):
        try:
            await get_caller(request, await bearer(request))
        except AppError as error:
            return await api_error_handler(request, error)
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
    refused stream, a failed run). FastAPI runs it once per request, whichever dependencies ask
    for it (`admit` and `get_service`)."""
    grant = await quotas.admit(caller)
    response.headers.update(grant.headers)
    try:
        yield grant
    finally:
        with anyio.CancelScope(shield=True):  # a client that hangs up still gets its refund
            await grant.release()


GrantDep = Annotated[Grant, Depends(get_grant)]


def streams(request: Request) -> bool:
    """Whether the route answers with server-sent events: a stream, whichever route it is."""
    answers = request.scope["route"].response_class
    return isinstance(answers, type) and issubclass(answers, EventSourceResponse)


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


# --- The service, with every layer around the agent -----------------------------------------------


def get_service(
    settings: SettingsDep, agent: AgentDep, cache: CacheDep, grant: GrantDep, cut: CutDep
) -> ResearchService:
    """The service a research request runs. Around the agent, innermost first: its tokens counted
    and charged to the caller's budget (access/usage.py), then the run ended when the shutdown
    grace runs out (until_cut.py); the cache, when there is one, keeps the answers of this
    caller's scope (cache.py)."""
    runs = UntilCut(Counted(agent, grant.spend), cut)
    answers = None
    if cache is not None:
        answers = ScopedAnswers(cache, settings.cache.CACHE_SCOPE, settings, agent, grant.caller.id)
    return ResearchService(runs, answers)


ServiceDep = Annotated[ResearchService, Depends(get_service)]
