"""The research agent's errors, in the course's one shape (research_agent/web/error_shape.py) for
every error the service sends, as a JSON body or as an SSE `error` event: its exceptions and
handlers.
"""

import asyncio
import logging
from collections.abc import Callable

from fastapi.responses import JSONResponse

from .error_shape import (  # noqa: F401 (the schema, the handlers, INTERNAL_ERROR for the 500s)
    INTERNAL_ERROR,
    ApiError,
    ErrorDetail,
    ErrorResponse,
    ValidationIssue,
    api_error_body,
    api_error_handler,
    error_body,
    http_error_handler,
    validation_error_handler,
)

logger = logging.getLogger(__name__)


# --- Errors the service raises --------------------------------------------------------------------


class AppError(ApiError):
    """The research agent's errors: the course's ApiError, each kind a class that fixes its status
    and type, raised with a message (and another type where one status has several)."""

    def __init__(self, message: str, *, error_type: str | None = None):
        super().__init__(message=message, error_type=error_type or None)


class NotReadyError(AppError):
    status = 503
    error_type = "not_ready"


class ShuttingDownError(AppError):
    """The shutdown grace ran out while this request was still running: send it again elsewhere."""

    status = 503
    error_type = "shutting_down"
    retryable = True

    def __init__(
        self,
        message: str = "the server is shutting down and this request did not "
        "finish within its grace period; send it again",
    ):
        super().__init__(message)


class UpstreamError(AppError):
    """The model provider or the search backend failed."""

    status = 502
    error_type = "upstream_error"


class UpstreamTimeoutError(AppError):
    """The model provider, the search backend or the whole request took too long."""

    status = 504
    error_type = "timeout"


class UnauthorizedError(AppError):
    """Missing and unknown keys get the same answer: nothing tells a guesser which it was."""

    status = 401
    error_type = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}

    def __init__(self) -> None:
        super().__init__("a valid API key is required: send Authorization: Bearer <key>")


class AmbiguousAuthorizationError(AppError):
    """Two Authorization headers: which one a proxy or framework reads is not ours to guess."""

    status = 400
    error_type = "ambiguous_authorization"

    def __init__(self) -> None:
        super().__init__("send one Authorization header, not several")


class LimitError(AppError):
    """429: rate_limited, too_many_streams or budget_exhausted. Retry-After says when to come back;
    the RateLimit fields say which limit it was (research_agent/access/limits/)."""

    status = 429
    retryable = True

    def __init__(self, message: str, error_type: str, headers: dict[str, str]):
        super().__init__(message, error_type=error_type)
        self.headers = headers


class LimitsUnavailableError(AppError):
    """503 while Redis cannot count and LIMITS_FAIL_MODE=closed."""

    status = 503
    error_type = "limits_unavailable"
    retryable = True

    def __init__(self, retry_after: int):
        super().__init__("the limits cannot be checked right now; send the request again later")
        self.headers = {"Retry-After": str(retry_after)}


def as_app_error(exc: BaseException, timeout_seconds: float) -> BaseException:
    """What a failed agent run raised, as the service's error: provider and timeout errors become
    AppErrors (502, 504); others stay unhandled (500)."""
    if isinstance(exc, AppError):
        return exc
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamTimeoutError(
            f"research took longer than {timeout_seconds:g} s", error_type="timeout"
        )
    try:
        import openai
    except ImportError:  # pragma: no cover - langchain-openai always brings it
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeoutError("the model provider timed out", error_type="model_timeout")
    if isinstance(exc, openai.APIStatusError):
        return UpstreamError(
            f"the model provider answered HTTP {exc.status_code}", error_type="model_error"
        )
    if isinstance(exc, openai.APIError):
        return UpstreamError(
            f"the model provider failed: {type(exc).__name__}", error_type="model_error"
        )
    return exc


def error_response(
    status: int, error_type: str, message: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(error_body(error_type, message), status_code=status, headers=headers)


# --- Handlers: every exception FastAPI turns into a response gets the shape -----------------------

# Counted by reason in research_requests_rejected_total (observability/metrics.py).
REJECTIONS = {
    "unauthorized",
    "rate_limited",
    "too_many_streams",
    "budget_exhausted",
    "limits_unavailable",
    "too_many_auth_failures",
}


def count_rejections(counter) -> Callable[[ApiError], None]:
    """install_shape_handlers' `count` for the research agent: each rejection (REJECTIONS), by
    reason, in `counter` (a Prometheus counter labelled by reason)."""

    def count(exc: ApiError) -> None:
        if exc.error_type in REJECTIONS:
            counter.labels(exc.error_type).inc()

    return count


def responses(*statuses: int, streaming: bool = False) -> dict:
    """The `responses=` of a route: what each error status really sends, for the OpenAPI schema.

    On a streaming route FastAPI would file a bare model under text/event-stream, but errors are
    always JSON: there the content type is named and the schema referenced.
    """
    json_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    body = {"content": json_body} if streaming else {"model": ErrorResponse}
    return {
        code: {"description": _DESCRIPTIONS[code], **body, **_HEADERS.get(code, {})}
        for code in statuses
    }


def _header(description: str) -> dict:
    return {"description": description, "required": True, "schema": {"type": "string"}}


# The headers each status always carries (draft-ietf-httpapi-ratelimit-headers-10 for RateLimit).
_HEADERS = {
    401: {"headers": {"WWW-Authenticate": _header("Bearer")}},
    429: {
        "headers": {
            "Retry-After": _header("seconds until the request may succeed"),
            "RateLimit-Policy": _header('the limit that was hit, e.g. "requests";q=30;w=60'),
            "RateLimit": _header('what is left of it, e.g. "requests";r=0;t=42'),
        }
    },
}


_DESCRIPTIONS = {
    400: "http_error: the body cannot be parsed at all (e.g. it is not UTF-8); "
    "ambiguous_authorization: more than one Authorization header",
    401: "unauthorized: API_KEYS is set and the Authorization header has no known key",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large: the body is over MAX_BODY_BYTES",
    414: "uri_too_long: the path and query are over 2048 bytes",
    422: "validation_error: the body does not match the schema (see details)",
    429: "rate_limited, too_many_streams, budget_exhausted or too_many_auth_failures "
    "(retryable after Retry-After)",
    500: "internal_error",
    502: "search_unavailable or model_error",
    503: "not_ready; shutting_down (retryable) when the shutdown grace ran out; "
    "limits_unavailable (retryable) when Redis cannot count and LIMITS_FAIL_MODE=closed",
    504: "search_timeout, model_timeout or timeout",
}
