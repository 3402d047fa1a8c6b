"""The other routes and their errors (docs/05, "The other routes and their errors"): read a run,
cancel it, pick a variation; and every failure answered in the course's one error shape."""

import asyncio
import logging

import docker
import redis.asyncio as redis
from app.error_shape import ErrorResponse, error_body, install_shape_handlers
from app.request_ids import safe_request_id
from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse

from .guards import ApiError, OwnedRun
from .presets import Selection
from .store import RunView

logger = logging.getLogger("variations")
CODES = (400, 401, 403, 404, 409, 422, 429, 500, 503)
ERRORS = {code: {"model": ErrorResponse} for code in CODES}  # what the OpenAPI schema lists
STREAM_RESPONSES = {
    200: {"content": {"text/event-stream": {}}, "description": "the run's events"},
    204: {"description": "the run has ended and no event follows the given id"},
    **ERRORS,
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        body = error_body(exc.error_type, exc.message)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

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
    app.add_middleware(CorrelationIdMiddleware, header_name="X-Request-ID", validator=None,
                       transformer=safe_request_id)  # fmt: skip
    install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    async def the_page() -> FileResponse:
        return FileResponse(page, media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

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
        await request.app.state.orchestrator.cancel(run_id)
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


class Cancelling:
    """Mixed into the Orchestrator: DELETE ends every variation as `cancelled` and removes the
    containers, those still being created included (it waits for them, CANCEL_WAIT_SECONDS)."""

    async def cancel(self, run_id: str) -> None:
        status = await self.runs.status(run_id)
        if status is None:
            raise ApiError(404, "run_not_found", f"no run {run_id}")
        if status != "running":
            raise ApiError(409, "run_ended", f"run {run_id} has already ended ({status})")
        await self.runs.mark_cancelled(run_id)
        await self.runs.add_event(run_id, "cancelled", {"variation": None})
        if run_id in self.starting:  # let the containers being created appear, then remove them too
            wait = self.settings.CANCEL_WAIT_SECONDS
            await asyncio.wait_for(asyncio.shield(self.starting[run_id]), wait)
        for i in range(await self.runs.count(run_id)):
            await self.runs.finish(run_id, i, "cancelled", reason="cancelled by the user")
        listed = await self.with_jobs(await asyncio.to_thread(self.workers.list))
        mine = [w for w in listed if w.run_id == run_id]
        await asyncio.gather(*(asyncio.to_thread(self.workers.remove, w.id) for w in mine))
