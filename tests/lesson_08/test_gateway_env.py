"""Lesson 08's tests that need its own environment (tests/lesson_08/gateway_env/: the gateway's
modules, its steps, and the clients of the current protocol generation, on mcp 2.x and fastmcp
4.x), run by one pytest of the Python of .venv/lesson08 (one interpreter for every file: each
start costs seconds), which `make test` builds from code/lesson08/requirements-host.txt. The
course's environment keeps mcp 1.x, which the agent's langchain-mcp-adapters requires, so the two
never share a process."""

import subprocess

import pytest

from support.lessons import ROOT
from support.mcp_servers import LESSON08_PYTHON

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

FOLDER = ROOT / "tests" / "lesson_08" / "gateway_env"


def test_in_lesson_08s_environment():
    if not LESSON08_PYTHON.exists():
        pytest.fail("no .venv/lesson08: `make mcp-test` builds it (make .venv/lesson08/.installed)")
    done = subprocess.run(
        [LESSON08_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["--confcutdir", FOLDER, FOLDER],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
