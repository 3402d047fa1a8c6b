"""Lesson 01, the production version: the OpenAPI document says what the API really sends.

FastAPI documents a route from its return type, so it would describe a 422 as `{"detail": ...}`
while the handlers send `{"error": ...}`, and a stream or /metrics as JSON. Passed as `responses=`,
these models and maps make /openapi.json describe every error in the one shape and every media type
as it is; tests/lesson_01/test_schemathesis.py holds the server to them.
"""

from typing import Any

from pydantic import BaseModel, Field


class ValidationIssue(BaseModel):
    """One problem of a 422, as pydantic reports it, so a client reads it the way FastAPI's own."""

    loc: list[str | int] = Field(description='Where the problem is, e.g. ["body", "query"]')
    msg: str
    type: str = Field(description="pydantic's error type, e.g. string_too_short")


class ErrorDetail(BaseModel):
    type: str = Field(examples=["validation_error"])
    message: str
    request_id: str
    details: list[ValidationIssue] | None = Field(default=None, description="422: one per problem")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Which error each status code stands for.
ERROR_STATUSES = {
    400: "The body cannot be decoded (for example invalid UTF-8)",
    413: "The body is larger than MAX_BODY_BYTES",
    422: "The body does not match the schema; `details` says where and why, one per problem",
    500: "Our bug: the traceback is in the logs, never in the response",
    502: "The model provider failed",
    503: "Not ready: this instance cannot serve now, try another",
    504: "The model did not answer within REQUEST_TIMEOUT_SECONDS",
}


def error_responses(*statuses: int, named: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: each status it can answer, with the error shape as its body.
    On a stream's route FastAPI would file a bare model under text/event-stream, but errors are
    JSON: `named=True` names the content type and refers to the schema (which a route with
    `named=False` puts in the components)."""
    if named:
        body = {"content": {"application/json": {"schema": {"$ref": ERROR_RESPONSE_REF}}}}
        return {s: {"description": ERROR_STATUSES[s], **body} for s in statuses}
    return {s: {"model": ErrorResponse, "description": ERROR_STATUSES[s]} for s in statuses}


ERROR_RESPONSE_REF = "#/components/schemas/ErrorResponse"


# /metrics answers Prometheus' text format, not the JSON FastAPI would assume.
METRICS_RESPONSE = {"description": "Prometheus text format", "content": {"text/plain": {}}}
