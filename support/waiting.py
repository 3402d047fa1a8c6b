"""Polling with a deadline: every wait in the tests and benchmarks is bounded in time."""

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], *, timeout: float = 15.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call `predicate` every `interval` s until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what or 'the condition'} not true after {timeout} s")
        time.sleep(interval)


def answers_200(url: str, timeout: float = 2.0) -> bool:
    """Whether GET `url` answers 200 now; False while it refuses or fails (still starting, or
    being replaced). For wait_for: `wait_for(lambda: answers_200(url), ...)`."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False
