"""The HTTP API: the routes, each given what it takes by a dependency (research_agent/deps.py).

The research routes run the service `deps.get_service` composes for each request, the agent inside
the layers research_agent/app.py attaches; the probes read what the app built at start.
"""

from collections.abc import AsyncIterable

from fastapi import APIRouter
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import TypeAdapter

from .deps import AgentDep, CacheDep, ServiceDep, SettingsDep
from .schemas import (
    HealthResponse,
    ReadyResponse,
    ResearchRequest,
    ResearchResponse,
    StreamEvent,
)
from .web.errors import responses

# What each error status really sends (400: a body that is not UTF-8; 413: over MAX_BODY_BYTES;
# 401 and 429: the keys and limits of docs/02 section 8).
RESEARCH_ERRORS = (400, 401, 413, 414, 422, 429, 500, 502, 503, 504)
probes = APIRouter()  # /health and /ready: open to load balancers and orchestrators
router = APIRouter()  # /v1: the research routes

# FastAPI writes what every event of a stream has (`itemSchema`: data, event, id, retry); this says
# which events the research stream sends, each with its data's model (schemas.py's frames, which
# `response_model` puts in the schema's components).
FRAMES = TypeAdapter(StreamEvent).json_schema(ref_template="#/components/schemas/{model}")
del FRAMES["$defs"]
EACH_EVENT_IS_A_FRAME = {
    "responses": {"200": {"content": {"text/event-stream": {"itemSchema": FRAMES}}}}
}


@probes.get("/health", response_model=HealthResponse)
async def health(settings: SettingsDep) -> HealthResponse:
    """Liveness: the process serves HTTP. Never calls the model, the search backend or Redis."""
    return HealthResponse(
        version=settings.APP_VERSION,
        model=settings.model_label,
        search_backend=settings.search_backend,
    )


@probes.get("/ready", response_model=ReadyResponse, responses=responses(503))
async def ready(agent: AgentDep, cache: CacheDep) -> ReadyResponse:
    """Readiness: 503 until the agent is built (and from SIGTERM on). A failing cache is reported
    ("bypassed"), not failed on: the service still answers without it."""
    if cache is not None:
        await cache.probe_if_due()
    return ReadyResponse(
        model=agent.model_label,
        search_backend=agent.search_backend,
        cache=cache.state if cache is not None else "disabled",
    )


@router.post("/v1/research", response_model=ResearchResponse, responses=responses(*RESEARCH_ERRORS))
async def research(body: ResearchRequest, service: ServiceDep) -> dict:
    """Research a question: the agent searches, then answers citing its sources as [1], [2]..."""
    return await service.research(body.query)


@router.post(
    "/v1/research/stream",
    response_class=EventSourceResponse,  # FastAPI's SSE: no-cache headers, keep-alive pings
    response_model=StreamEvent,  # the frames, into the components (the events pass unchecked)
    responses={
        200: {"description": "One event per item"},
        **responses(*RESEARCH_ERRORS, streaming=True),
    },
    openapi_extra=EACH_EVENT_IS_A_FRAME,
)
async def research_stream(
    body: ResearchRequest, service: ServiceDep
) -> AsyncIterable[ServerSentEvent]:
    """Server-sent events: `token`*, `tool` per search, `final` or `error`, then `data: [DONE]`.
    Every check that answers with a status (the key, the limits, readiness) is a dependency: it
    runs before the 200 is sent; once the stream has started, a failure is its `error` event.
    FastAPI adds the headers the dependencies set (the RateLimit fields, docs/02 section 8)."""
    async for event in service.research_events(body.query):
        yield event
