"""The later layers' dependencies: who is calling and how much they may spend (docs/02 section 8),
and the service each research request runs, with every layer around its agent.

research_agent/app.py attaches them: `admit` and `count_streams` run before each research route,
and `layered_service` is how the app composes the service the routes' `get_service` returns
(research_agent/api.py).
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse

from .access.caller import bearer, get_caller
from .access.keys import Caller
from .access.quotas import Grant, Quotas
from .access.usage import Counted
from .agent import Runs
from .cache import ScopedAnswers
from .observability.metrics import STREAMS_OPEN
from .service import ResearchService
from .settings import Settings
from .shutdown import Shutdown, UntilCut
from .web.errors import (
    AppError,
    NotReadyError,
    api_error_handler,
    validation_error_handler,
)

# --- Who is calling, and how much they may spend -------------------------------------------------


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
    request: Request, response: Response, caller: CallerDep, quotas: QuotasDep
) -> AsyncIterator[Grant]:
    """429 when the caller is over its rate limit or its token budget. Once the response is over,
    what the request reserved of the budget and did not spend goes back (a cached answer, a
    refused stream, a failed run). The grant stays on the request for the service it runs
    (layered_service)."""
    grant = await quotas.admit(caller)
    request.state.grant = grant
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


# --- The service, with every layer around the agent ----------------------------------------------


def layered_service(request: Request, agent: Runs, cache: Any) -> ResearchService:
    """The service each research request runs (the app's `compose_service`, api.get_service),
    from the agent and the cache the routes' dependencies give, so that a test overriding one of
    them (a failing agent, no cache) reaches the service too, and the grant `admit` took for the
    caller. Around the agent, innermost first: its tokens counted and charged to the caller's
    budget (access/usage.py), then the run ended when the shutdown grace runs out (shutdown.py)."""
    grant: Grant = request.state.grant
    settings: Settings = request.app.state.settings
    shutdown: Shutdown = request.app.state.shutdown
    runs = UntilCut(Counted(agent, grant.spend), shutdown.cut)
    answers = ScopedAnswers(cache, settings, agent, grant.caller.id) if cache is not None else None
    return ResearchService(runs, answers)
