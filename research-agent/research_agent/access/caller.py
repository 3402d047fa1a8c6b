"""Who is calling: the API key a request presents, checked against API_KEYS, and the caller it
names (docs/02 section 8). The routes' dependencies (research_agent/deps.py) and the check before
the body (key_before_body.py) both ask `get_caller`; neither the ASGI layer nor this module needs
the routes.
"""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..web.errors import AmbiguousAuthorizationError, AppError, UnauthorizedError
from .keys import Caller, fingerprint

# Where KeyBeforeBodyMiddleware leaves the caller it found, in the request's state.
VERIFIED_CALLER = "verified_caller"
# auto_error=False: a missing key gets our 401 (error shape, WWW-Authenticate), not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="API_KEYS: send `Authorization: Bearer <key>`")


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """401 unless the request carries a known key (when API_KEYS is set), 429 for an address
    that sent too many requests without one (AUTH_FAILURE_LIMIT). The access log names the
    caller (the key's name) or the fingerprint of a wrong key, never a key."""
    verified = getattr(request.state, VERIFIED_CALLER, None)
    if (
        verified is not None
    ):  # checked before the body was read (research_agent/access/key_before_body.py)
        return verified
    if len(request.headers.getlist("authorization")) > 1:
        raise AmbiguousAuthorizationError()
    token = credentials.credentials if credentials else None
    client = request.client.host if request.client else "unknown"
    api_keys, quotas = request.app.state.api_keys, request.app.state.quotas
    try:
        caller = api_keys.authenticate(token, client)
    except UnauthorizedError:
        # One log line per failure, the access log's: a flood of guesses is not doubled in it.
        request.state.key_fingerprint = fingerprint(token) if token else "none"
        if quotas is not None:
            await quotas.failed_auth(client)
        raise
    if api_keys.enabled and quotas is not None:
        try:
            await quotas.check_auth(client)
        except AppError:
            # A right key from an address over its failures: the log says which key, as a hash.
            request.state.key_fingerprint = fingerprint(token)
            raise
    request.state.caller = caller.id
    return caller
