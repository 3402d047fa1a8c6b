"""How a limit describes itself: the RateLimit fields of an answer, its line in the start-up log.

Answers carry the RateLimit fields of draft-ietf-httpapi-ratelimit-headers-10:
`RateLimit-Policy: "requests";q=30;w=60` (the limit) and `RateLimit: "requests";r=29;t=60` (what
is left, and in how many seconds it is back). A 429 carries them for the limit that was hit, and
Retry-After.
"""

import math
import time

from limits import RateLimitItem
from limits import parse as parse_limit


def named(limit: str, policy: str) -> RateLimitItem:
    """A limit setting (`30/minute`) as a `limits` item in the policy's namespace, which keeps each
    policy's counts under keys of their own: two limits of one caller never share a count."""
    parsed = parse_limit(limit)  # e.g. RateLimitItemPerMinute(30)
    return type(parsed)(parsed.amount, parsed.multiples, namespace=policy)


def seconds_until(reset_time: float) -> int:
    return max(math.ceil(reset_time - time.time()), 0)


def fields(policy: str, item: RateLimitItem, remaining: int, reset_in: int) -> dict[str, str]:
    return {
        "RateLimit-Policy": f'"{policy}";q={item.amount};w={item.get_expiry()}',
        "RateLimit": f'"{policy}";r={remaining};t={reset_in}',
    }


def retry_after(seconds: int) -> dict[str, str]:
    # Never 0: a window that ends within the second would tell the client to retry at once.
    return {"Retry-After": str(max(seconds, 1))}


def describe(item: RateLimitItem | None) -> str:
    return f"{item.amount}/{item.get_expiry()}s" if item else "off"
