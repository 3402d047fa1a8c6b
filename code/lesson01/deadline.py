"""Lesson 01, step 2: the deadline on each model call, and what its failures become.

A model call that hangs would hold a request (and a worker's memory) until the client gives up; a
provider that fails would surface as a generic 500. `model_deadline` turns both into an
`UpstreamError` that the API answers as a 504 or a 502 in its error shape.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import openai

logger = logging.getLogger("agent_api")


class UpstreamError(Exception):
    """The model provider failed or timed out; it becomes a 502 or 504."""

    def __init__(self, status_code: int, error_type: str, message: str):
        self.status_code, self.error_type, self.message = status_code, error_type, message


@asynccontextmanager
async def model_deadline(timeout_seconds: float | None) -> AsyncIterator[None]:
    try:
        async with asyncio.timeout(timeout_seconds):
            yield
    except (TimeoutError, openai.APITimeoutError):
        message = f"The model did not answer within {timeout_seconds:g}s"
        raise UpstreamError(504, "timeout", message) from None
    except openai.APIError as exc:
        logger.warning("Model provider failed: %s", exc)
        raise UpstreamError(502, "upstream_error", "The model provider failed") from None
