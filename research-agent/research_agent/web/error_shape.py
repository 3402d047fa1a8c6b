"""The course's one error shape, {"error": {"type", "message", "request_id", ...}}: its schema and
the body every service builds. No side effects on import, so lessons 04, 05 and 07 use it as the
research agent does (research_agent/web/errors.py adds the research agent's exceptions and
handlers).
"""

import uuid
from collections.abc import Callable

from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

# --- The shape, as it appears in the OpenAPI schema -----------------------------------------------


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description='Where the problem is, e.g. ["body", "query"]')
    msg: str
    type: str = Field(description="pydantic's error type, e.g. string_too_long")


class ErrorDetail(BaseModel):
    type: str = Field(description="snake_case, stable: clients branch on it")
    message: str = Field(description="for humans; never a stack trace")
    request_id: str = Field(description="also in the X-Request-ID header and in every log line")
    details: list[ValidationIssue] | None = Field(
        default=None, description="validation_error only: one entry per problem"
    )
    retryable: bool | None = Field(
        default=None, description="true when the same request may succeed if sent again"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


# What a 500 says, wherever it is sent (a handler, a middleware, a stream's error event): the
# traceback goes to the log, the client gets this and the request id.
INTERNAL_ERROR_MESSAGE = "Internal server error"
INTERNAL_ERROR = (500, "internal_error", INTERNAL_ERROR_MESSAGE)


def error_body(error_type: str, message: str, *, request_id: str | None = None, **extra) -> dict:
    """The body, with the id the request was logged under (CorrelationIdMiddleware's), or a new one
    outside a request. `extra`: details, retryable, or a service's own fields."""
    request_id = request_id or correlation_id.get() or uuid.uuid4().hex
    return {"error": {"type": error_type, "message": message, "request_id": request_id, **extra}}


# An HTTPException's status -> the error type clients branch on. 400 is a body that cannot be parsed
# at all (not UTF-8, nested too deep).
HTTP_ERROR_TYPES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
}


class ApiError(Exception):
    """An answer a route gives on purpose, in the shape: raise ApiError(409, "run_ended", "…") and
    install_shape_handlers sends it with its status and headers (a Retry-After, say). The one
    error base of the course: the research agent's errors (research_agent/web/errors.py, AppError)
    fix their status, type and whether a retry may succeed as class attributes."""

    status = 500
    error_type = "internal_error"
    retryable = False  # sent as "retryable": true when true; a client reads its absence as no
    headers: dict | None = None

    def __init__(
        self,
        status: int | None = None,
        error_type: str | None = None,
        message: str = "",
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = error_type
        if headers is not None:
            self.headers = headers


def api_error_body(exc: ApiError) -> dict:
    """The body of an ApiError: for a response, or an SSE `error` event."""
    extra = {"retryable": True} if exc.retryable else {}
    return error_body(exc.error_type, exc.message, **extra)


async def api_error_handler(request: Request, exc: ApiError) -> Response:
    """The shape of an ApiError, counted first when the app counts the errors it sends
    (install_shape_handlers' `count`). A status that has no body (a 204) is sent without one."""
    count = getattr(request.app.state, "count_error", None)
    if count is not None:
        count(exc)
    if not is_body_allowed_for_status_code(exc.status):
        return Response(status_code=exc.status, headers=exc.headers)
    return JSONResponse(api_error_body(exc), status_code=exc.status, headers=exc.headers)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    body = error_body("validation_error", "the request is not valid", details=details)
    return JSONResponse(body, status_code=422)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
    # Headers kept: a 405 carries Allow.
    body = error_body(error_type, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def internal_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # Anything not foreseen: Starlette re-raises it after this answer, so the server logs the
    # traceback; the client gets the shape, never the traceback.
    status, error_type, message = INTERNAL_ERROR
    return JSONResponse(error_body(error_type, message), status)


def install_shape_handlers(
    app: FastAPI,
    *,
    unforeseen: bool = True,
    count: Callable[[ApiError], None] | None = None,
) -> None:
    """ApiError, 422, any HTTPException and anything unforeseen answered in the shape: what every
    API of the course shares (lessons 04, 05, 07, 10, the research agent). `unforeseen=False`
    leaves the 500 to the app (the research agent's access-log middleware answers it); `count`
    is told of each ApiError sent (the research agent counts its rejections in a metric)."""
    app.state.count_error = count
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    if unforeseen:
        app.add_exception_handler(Exception, internal_error_handler)
