"""Lesson 08's tests that need its own environment (tests/lesson_08/gateway_env/: the gateway's
modules, its steps, and the clients of the current protocol generation, on mcp 2.x and fastmcp
4.x), each file run as a pytest of its own by the Python of .venv/lesson08, which `make test`
builds from docker/lesson08/requirements-host.txt. The course's environment keeps mcp 1.x, which
the agent's langchain-mcp-adapters requires, so the two never share a process."""

import subprocess

import pytest

from support.lessons import ROOT
from support.mcp_servers import LESSON08_PYTHON

FOLDER = ROOT / "tests" / "lesson_08" / "gateway_env"
FILES = sorted(path.name for path in FOLDER.glob("test_*.py"))


@pytest.mark.parametrize("name", FILES)
def test_in_lesson_08s_environment(name):
    if not LESSON08_PYTHON.exists():
        pytest.fail("no .venv/lesson08: `make test` builds it (make .venv/lesson08/.installed)")
    done = subprocess.run(
        [LESSON08_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        + ["--confcutdir", FOLDER, FOLDER / name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-8000:]
