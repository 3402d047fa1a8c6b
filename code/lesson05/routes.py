"""The other routes and their errors (docs/05, "The other routes and their errors"): read a run,
cancel it, pick a variation; and every failure answered in the course's one error shape."""

import asyncio
import logging

import docker
import redis.asyncio as redis
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from research_agent import (
    ApiError,
    ErrorResponse,
    error_body,
    install_request_ids,
    install_shape_handlers,
)

from .guards import OwnedRun
from .presets import Selection
from .redis_access import METRICS
from .store import RunView

logger = logging.getLogger("variations")
CODES = (400, 401, 403, 404, 409, 422, 429, 500, 503)
ERRORS = {code: {"model": ErrorResponse} for code in CODES}  # what the OpenAPI schema lists
# The events route: FastAPI files its 200 under text/event-stream, with the schema of an event (its
# data, event, id and retry), and would file a bare model there too; its errors are JSON.
STREAM_CODES = (400, 401, 403, 404, 422, 429, 500, 503)
ERROR_JSON = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
STREAM_RESPONSES = {
    200: {"description": "the run's events, each with its Redis Stream id"},
    204: {"description": "the run has ended and no event follows the given id"},
    **{code: {"content": ERROR_JSON} for code in STREAM_CODES},
}


def install_error_handlers(app: FastAPI) -> None:
    install_shape_handlers(app)

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        logger.warning("Redis failed: %r", exc)
        return JSONResponse(error_body("redis_unavailable", "Redis is not answering"), 503)

    @app.exception_handler(docker.errors.DockerException)
    async def docker_down(request: Request, exc: docker.errors.DockerException) -> JSONResponse:
        logger.warning("Docker failed: %r", exc)
        return JSONResponse(error_body("docker_unavailable", "Docker is not answering"), 503)


async def existing(request: Request, run_id: str) -> dict:
    view = await request.app.state.orchestrator.runs.view(run_id)
    if view is None:
        raise ApiError(404, "run_not_found", f"no run {run_id} (it may have expired)")
    return view


def add_other_routes(app: FastAPI, page) -> None:
    install_request_ids(app)
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def the_page() -> FileResponse:
        return FileResponse(page, media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        """Prometheus's text format: the worker events the relay refused (redis_access.py)."""
        return Response(generate_latest(METRICS), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(request: Request) -> dict:
        """200 once Redis answers: /health says the process is up, this that it can serve runs."""
        await request.app.state.orchestrator.runs.client.ping()  # a RedisError answers 503
        return {"status": "ready"}

    @app.get("/v1/runs/{run_id}", responses=ERRORS)
    async def get_run(run_id: OwnedRun, request: Request) -> RunView:
        """Each variation's status, exit code and final answer; the user's pick."""
        return await existing(request, run_id)

    @app.delete("/v1/runs/{run_id}", responses=ERRORS)
    async def cancel_run(run_id: OwnedRun, request: Request) -> RunView:
        """Stop and remove the run's containers; the stream says `cancelled`, then `run_done`."""
        await cancel(request.app.state.orchestrator, run_id)
        return await existing(request, run_id)

    @app.post("/v1/runs/{run_id}/select", responses=ERRORS)
    async def select(run_id: OwnedRun, body: Selection, request: Request) -> RunView:
        """Store the user's pick: one variation that succeeded."""
        view = await existing(request, run_id)
        count = len(view["variations"])
        if body.variation >= count:
            raise ApiError(422, "no_such_variation", f"run {run_id} has {count} variations")
        if view["variations"][body.variation]["status"] != "succeeded":
            message = "only a variation that answered can be picked"
            raise ApiError(409, "variation_not_succeeded", message)
        await request.app.state.orchestrator.runs.select(run_id, body.variation)
        return await existing(request, run_id)


async def cancel(orchestrator, run_id: str) -> None:
    """DELETE ends every variation as `cancelled` and removes the containers, those still being
    created included (it waits for them, CANCEL_WAIT_SECONDS)."""
    runs, workers = orchestrator.runs, orchestrator.workers
    status = await runs.status(run_id)
    if status is None:
        raise ApiError(404, "run_not_found", f"no run {run_id}")
    if status != "running":
        raise ApiError(409, "run_ended", f"run {run_id} has already ended ({status})")
    await runs.mark_cancelled(run_id)
    await runs.add_event(run_id, "cancelled", {"variation": None})
    if task := orchestrator.starting.get(run_id):  # let the containers being created appear
        wait = orchestrator.settings.CANCEL_WAIT_SECONDS  # then remove them too
        await asyncio.wait_for(asyncio.shield(task), wait)
    for i in range(await runs.count(run_id)):
        await runs.finish(run_id, i, "cancelled", reason="cancelled by the user")
    listed = await orchestrator.pool.with_jobs(await asyncio.to_thread(workers.list))
    mine = [w for w in listed if w.run_id == run_id]
    await asyncio.gather(*(asyncio.to_thread(workers.remove, w.id) for w in mine))
