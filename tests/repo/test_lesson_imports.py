"""A lesson that needs research-agent/ on sys.path adds it once: loading the lesson again (each
test fixture loads a fresh module) must not grow sys.path."""

import logging
import sys

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from support.lessons import load_lesson


def load_and_forget_metrics(relpath: str):
    """Load the lesson, then unregister its Prometheus metrics so that loading it again can
    register them anew (the default registry refuses a metric name twice)."""
    module = load_lesson(relpath)
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            REGISTRY.unregister(value)
    return module


@pytest.mark.parametrize("relpath", ["code/04_sandboxed_tools.py", "code/07_gateway.py"])
def test_loading_a_lesson_twice_does_not_grow_sys_path(relpath, monkeypatch):
    monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
    monkeypatch.setattr(sys, "path", sys.path[:])  # whatever happens, other tests see it unchanged
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # a lesson may configure logging on import
    try:
        load_and_forget_metrics(relpath)
        after_first = sys.path[:]
        load_and_forget_metrics(relpath)
        assert sys.path == after_first
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
