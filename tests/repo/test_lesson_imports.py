"""A lesson imports the research agent as an installed package: loading it (each test fixture
loads a fresh module) leaves sys.path as it was, and no lesson is loaded while pytest collects."""

import ast
import logging
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from support.lessons import import_lesson


def load_and_forget_metrics(relpath: str):
    """Load the lesson, then unregister its Prometheus metrics so that loading it again can
    register them anew (the default registry refuses a metric name twice)."""
    module = import_lesson(relpath)
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            REGISTRY.unregister(value)
    return module


@pytest.mark.parametrize(
    "relpath",
    [
        "code/lesson04/sandboxed_tools.py",
        "code/lesson05/variations_api.py",
        "code/lesson07/gateway.py",
    ],
)
def test_loading_a_lesson_leaves_sys_path_as_it_was(relpath, monkeypatch):
    monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
    monkeypatch.setattr(sys, "path", sys.path[:])  # whatever happens, other tests see it unchanged
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # a lesson may configure logging on import
    before = sys.path[:]
    try:
        load_and_forget_metrics(relpath)
        assert sys.path == before
        load_and_forget_metrics(relpath)
        assert sys.path == before
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


TESTS = Path(__file__).resolve().parents[1]


def loads_at_import(source: str) -> list[int]:
    """Lines where a test module calls import_lesson outside any function: while pytest collects."""
    tree = ast.parse(source)
    inside = {
        id(node)
        for top in ast.walk(tree)
        if isinstance(top, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for node in ast.walk(top)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_lesson"
        and id(node) not in inside
    ]


def test_the_check_sees_a_load_at_import_and_not_one_in_a_fixture():
    assert loads_at_import('agents = import_lesson("code/lesson07/event_agents.py")\n') == [1]
    assert loads_at_import('x = lessons.import_lesson("a.py")\n') == [1]
    in_fixture = (
        "@pytest.fixture\ndef agents():\n"
        '    return import_lesson("code/lesson07/event_agents.py")\n'
    )
    assert loads_at_import(in_fixture) == []


@pytest.mark.parametrize(
    "folder", sorted(p.name for p in TESTS.iterdir() if p.is_dir() and p.name.startswith("lesson_"))
)
def test_lessons_are_loaded_by_fixtures_not_while_pytest_collects(folder):
    # A lesson loaded at import runs its module code (settings, logging, sys.path) during
    # collection, for every test run, and one that fails to import breaks the whole collection.
    found = {
        path.name: lines
        for path in sorted((TESTS / folder).glob("*.py"))
        if (lines := loads_at_import(path.read_text(encoding="utf-8")))
    }
    assert found == {}, "load the lesson in a fixture (see tests/lesson_07/conftest.py)"
