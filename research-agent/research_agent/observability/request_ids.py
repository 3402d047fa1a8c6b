"""Which X-Request-ID a service keeps, and the middleware that keeps it, for the research agent and
the lesson APIs alike (install_request_ids).

The id is written on every log line of the request and sent back to the caller, so a caller's own
id is kept only when it is short and plain: no spaces, quotes, tabs or non-ASCII bytes that a log
reader or a terminal would take for structure. Any other is replaced by a new one.
"""

import logging
import re
import uuid

from asgi_correlation_id import CorrelationIdFilter, CorrelationIdMiddleware
from starlette.applications import Starlette

# code/lesson06/swarm/haproxy.cfg applies the same expression in front of the agents.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_valid_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def safe_request_id(given: str) -> str:
    """The id as given, or a new one in its place: asgi-correlation-id's `transformer`. Its
    `validator` would do the same but log a warning per refused id, two log lines for every
    hostile request."""
    return given if is_valid_request_id(given) else uuid.uuid4().hex


def install_request_ids(app: Starlette) -> None:
    """asgi-correlation-id's middleware: the caller's X-Request-ID if it is safe, a new one if not,
    set for the request's log lines and error bodies and echoed in the response. Starlette runs
    the middleware added last first: add it after those whose log lines should carry the id."""
    app.add_middleware(
        CorrelationIdMiddleware,
        header_name="X-Request-ID",
        validator=None,
        transformer=safe_request_id,
    )


def log_with_request_ids(*, force: bool = False) -> None:
    """Plain-text logs in which every line names its request (uvicorn's access line included): the
    id error bodies carry. For the lesson APIs; the research agent logs JSON
    (research_agent/observability/metrics.py)."""
    handler = logging.StreamHandler()
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    logging.basicConfig(
        level="INFO",
        format="%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s",
        handlers=[handler],
        force=force,
    )
