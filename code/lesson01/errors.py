"""Lesson 01, step 4: one error shape for every failure, and a deadline on the model.

Every error a client gets is {"error": {"type", "message", "request_id", ...}}: `type` says what to
do (fix the request, try again later, try another instance), `request_id` finds the log lines.
`ERROR_HANDLERS` answers each kind of failure in that shape; `model_deadline` makes a model that
hangs a 504 and a provider that fails a 502.
"""

import asyncio
import logging
from contextlib import asynccontextmanager

import openai
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .request_context import request_id_var

logger = logging.getLogger("agent_api")
INTERNAL_ERROR_MESSAGE = "Internal server error"  # all a 500 says: the traceback is in the log
INTERNAL_ERROR = ("internal_error", INTERNAL_ERROR_MESSAGE)  # error_body(*INTERNAL_ERROR)


def error_body(error_type: str, message: str, **extra) -> dict:
    error = {"type": error_type, "message": message, "request_id": request_id_var.get()}
    return {"error": error | extra}


class ModelError(Exception):
    """The model failed (502 upstream_error) or did not answer in time (504 timeout)."""

    def __init__(self, status: int, error_type: str, message: str):
        super().__init__(message)
        self.status, self.error_type = status, error_type


@asynccontextmanager
async def model_deadline(when: float):
    """Wait for the model until `when`, on the event loop's clock."""
    try:
        async with asyncio.timeout_at(when):
            yield
    except (TimeoutError, openai.APITimeoutError):
        raise ModelError(504, "timeout", "The model did not answer in time") from None
    except openai.APIError:
        logger.exception("The model provider failed")  # the details go to the log only
        raise ModelError(502, "upstream_error", "The model provider failed") from None


ERROR_TYPES = {404: "not_found", 405: "method_not_allowed", 503: "not_ready"}


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    body = error_body(ERROR_TYPES.get(exc.status_code, "http_error"), str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)  # a 405's Allow


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    body = error_body("validation_error", "The request body is invalid", details=details)
    return JSONResponse(body, status_code=422)


async def model_error(request: Request, exc: ModelError) -> JSONResponse:
    return JSONResponse(error_body(exc.error_type, str(exc)), status_code=exc.status)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # Our bug: uvicorn logs the traceback; the client learns nothing of our internals.
    return JSONResponse(error_body(*INTERNAL_ERROR), status_code=500)


# FastAPI(exception_handlers=ERROR_HANDLERS): each kind of failure, answered in the one shape.
ERROR_HANDLERS = {
    HTTPException: http_error,  # FastAPI's 404 and 405, get_agent's 503
    RequestValidationError: validation_error,  # 422: every problem, where it is
    ModelError: model_error,  # 502, 504: from model_deadline
    Exception: internal_error,  # 500: anything else
}
