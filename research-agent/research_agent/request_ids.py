"""Which X-Request-ID a service keeps, for the research agent and lesson 05's API alike.

The id is written on every log line of the request and sent back to the caller, so a caller's own
id is kept only when it is short and plain: no spaces, quotes, tabs or non-ASCII bytes that a log
reader or a terminal would take for structure. Any other is replaced by a new one.
"""

import logging
import re
import uuid

from asgi_correlation_id import CorrelationIdFilter

# deploy/swarm/haproxy.cfg applies the same expression in front of the agents.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def is_valid_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None


def safe_request_id(given: str) -> str:
    """The id as given, or a new one in its place: asgi-correlation-id's `transformer`. Its
    `validator` would do the same but log a warning per refused id, two log lines for every
    hostile request."""
    return given if is_valid_request_id(given) else uuid.uuid4().hex


def log_with_request_ids(*, force: bool = False) -> None:
    """Plain-text logs in which every line names its request (uvicorn's access line included): the
    id error bodies carry. For the lesson APIs; the research agent logs JSON
    (research_agent/telemetry.py)."""
    handler = logging.StreamHandler()
    handler.addFilter(CorrelationIdFilter(default_value="-"))
    logging.basicConfig(
        level="INFO",
        format="%(asctime)s %(levelname)s %(name)s [%(correlation_id)s]: %(message)s",
        handlers=[handler],
        force=force,
    )
