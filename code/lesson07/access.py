"""Bounds and access (docs/07, "Bounds and access"): what the gateway (code/lesson07/gateway.py)
checks before a question is published or an answer read. Who may ask: the Host names in
ALLOWED_HOSTS, and for what belongs to a student, that student's token (checked first, so that
nobody else spends the student's questions). How much: ENROLMENTS_PER_MINUTE per client address,
ASKS_PER_MINUTE per student (moving windows in Redis, the `limits` library) and MAX_BACKLOG
unanswered questions in all."""

import hashlib
import hmac
import re

import redis.asyncio as redis
from limits import RateLimitItemPerMinute
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

from lesson07 import contract
from research_agent import ApiError, error_body

REFUSED = Counter("questions_refused_total", "Questions not admitted", ["reason"])


def token_hash(settings: contract.GatewaySettings, token: str) -> str:
    """What Redis keeps of a student's token: its HMAC-SHA256 under TOKEN_KEY, which only the
    gateway holds. Whoever can write a student's key cannot make a hash for a token of their own."""
    key = settings.token_key.get_secret_value().encode()
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


async def check_student(
    r: redis.Redis, settings: contract.GatewaySettings, student_id: str, token: str | None
) -> None:
    """Only the student's own token reads what belongs to the student."""
    if token is None:
        message = "send the student's student_token as `Authorization: Bearer <token>`"
        raise ApiError(401, "student_token_missing", message, {"WWW-Authenticate": "Bearer"})
    stored = await r.get(contract.student_key(student_id))
    if stored is None or not hmac.compare_digest(stored, token_hash(settings, token)):
        raise ApiError(403, "not_this_student", "this is not the token of that student")


async def admit_enrolment(
    limiter: MovingWindowRateLimiter, settings: contract.GatewaySettings, request: Request
) -> None:
    """429 past ENROLMENTS_PER_MINUTE from one client address: student ids are not claimed in
    bulk, and the keys they make stay few."""
    per_minute = RateLimitItemPerMinute(settings.enrolments_per_minute)
    client = request.client.host if request.client else "unknown"
    if not await limiter.hit(per_minute, "enrol", client):
        REFUSED.labels("enrolments").inc()
        message = f"at most {settings.enrolments_per_minute} enrolments a minute per address"
        raise ApiError(429, "rate_limited", message, {"Retry-After": "60"})


async def admit(
    r: redis.Redis,
    limiter: MovingWindowRateLimiter,
    settings: contract.GatewaySettings,
    student_id: str,
) -> None:
    """429 past ASKS_PER_MINUTE for one student, 503 past MAX_BACKLOG unanswered questions."""
    per_minute = RateLimitItemPerMinute(settings.asks_per_minute)
    if not await limiter.hit(per_minute, "ask", student_id):
        REFUSED.labels("rate").inc()
        message = f"at most {settings.asks_per_minute} questions a minute per student"
        raise ApiError(429, "rate_limited", message, {"Retry-After": "60"})
    pipe = r.pipeline(transaction=False)
    topics = [contract.LEARNING, *contract.SPECIALIST_TOPICS.values()]
    for topic in topics:
        pipe.xinfo_groups(topic)
        pipe.xlen(topic)
    replies = await pipe.execute(raise_on_error=False)
    backlog = 0
    for topic, groups, length in zip(topics, replies[::2], replies[1::2], strict=True):
        group = contract.GROUPS[topic]
        mine = [g for g in groups if g["name"] == group] if isinstance(groups, list) else []
        # No group yet (its agent never started): it will read the whole topic.
        backlog += mine[0]["pending"] + (mine[0].get("lag") or 0) if mine else length
    if backlog >= settings.max_backlog:
        REFUSED.labels("backlog").inc()
        message = f"{backlog} questions are waiting (MAX_BACKLOG is {settings.max_backlog})"
        raise ApiError(503, "busy", message, {"Retry-After": "5"})


# A Host header is a name or an IPv4 address, or an IPv6 address in brackets, then maybe a port.
HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[^:\[\]@/\s]+))(?::[0-9]{1,5})?")


def host_of(header: str) -> str | None:
    """The host a Host header names (`[::1]:8070` names `::1`), lowercased; None for anything
    that is not a Host header."""
    found = HOST.fullmatch(header)
    return (found["ipv6"] or found["name"]).lower() if found else None


class HostCheck:
    """400 in the error shape for a Host header not in ALLOWED_HOSTS: a page on another site cannot
    reach the gateway through a DNS name rebound to 127.0.0.1."""

    def __init__(self, app, hosts: set[str]):
        self.app, self.hosts = app, {host.strip("[]").lower() for host in hosts}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = host_of(Headers(scope=scope).get("host", ""))
            if host is None or host not in self.hosts:
                body = error_body("invalid_host", "this Host is not served here")
                await JSONResponse(body, 400)(scope, receive, send)
                return
        await self.app(scope, receive, send)
