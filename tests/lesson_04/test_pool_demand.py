"""The pool's size as demand rises and falls, without Docker: the runs' start times are set by the
test and the pool's clock is the test's, so what is asserted is the target, never a duration."""

from types import SimpleNamespace

import pytest

from research_agent.sandbox import pool as pool_module
from research_agent.sandbox.pool import (
    DEMAND_WINDOW_SECONDS,
    SHRINK_AFTER_SECONDS,
    ContainerPool,
)
from research_agent.sandbox.runner import SandboxConfig, SandboxRunner


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(pool_module, "time", SimpleNamespace(monotonic=clock))  # its own only
    return clock


def pool(**config) -> ContainerPool:
    """A pool whose keeper never starts: only its arithmetic runs."""
    runner = SandboxRunner(SandboxConfig(**config), client=object())
    made = ContainerPool(runner)
    made.close()
    return made


def started(made: ContainerPool, clock: Clock, runs: int) -> None:
    for _ in range(runs):
        made._started.append(clock.now)


def test_the_pool_grows_to_the_runs_of_the_last_half_minute_within_its_maximum(clock):
    made = pool(pool_size=2, pool_max=20, max_concurrent=24)
    assert made.target() == 2
    started(made, clock, 12)
    assert made.target() == 12
    started(made, clock, 30)
    assert made.target() == 20


def test_a_burst_a_little_after_busy_runs_finds_the_pool_they_grew(clock):
    made = pool(pool_size=2, pool_max=20, max_concurrent=24)
    started(made, clock, 16)
    assert made.target() == 16
    clock.now += DEMAND_WINDOW_SECONDS + 5  # the runs have left the demand window
    assert made.target() == 16
    started(made, clock, 4)  # a lower demand meanwhile does not lower it either
    assert made.target() == 16


def test_the_pool_shrinks_once_demand_has_stayed_lower_for_a_minute(clock):
    made = pool(pool_size=2, pool_max=20, max_concurrent=24)
    started(made, clock, 16)
    assert made.target() == 16
    clock.now += DEMAND_WINDOW_SECONDS + 1
    started(made, clock, 5)
    assert made.target() == 16
    clock.now += SHRINK_AFTER_SECONDS - DEMAND_WINDOW_SECONDS  # 16 seen over a minute ago
    assert made.target() == 5
    clock.now += SHRINK_AFTER_SECONDS + 1  # nothing for a minute: back to the minimum
    assert made.target() == 2


def test_the_memory_budget_caps_a_peak_seen_before_it_was_measured(clock):
    made = pool(pool_size=2, pool_max=20, pool_budget_mib=80, max_concurrent=24)
    started(made, clock, 20)
    assert made.target() == 20  # no idle container measured yet
    made.idle_memory_bytes = 8 * 2**20
    assert made.target() == 10
