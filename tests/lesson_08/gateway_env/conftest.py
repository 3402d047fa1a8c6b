"""Lesson 08's tests that import what only its own environment has (mcp 2.x, fastmcp 4.x): the
gateway's modules, its steps, and the current generation's clients. They run with the Python of
.venv/lesson08, each file as a pytest of its own, from tests/lesson_08/test_gateway_env.py; the
course's pytest leaves this folder alone (tests/lesson_08/conftest.py)."""

import pytest

from support.mcp_servers import NOTES_SERVER, REPO, gateway, tool_server
from tests.support.mcp_catalog import gateway_catalog

HOSTILE_SERVER = REPO / "tests" / "support" / "mcp_hostile_server.py"
PYTHON_SERVER = REPO / "code" / "lesson08" / "python_server.py"
AGENT_TOKEN = "agent-token-for-tests"
TESTER_TOKEN = "tester-token-for-tests"


@pytest.fixture(scope="module")
def notes(tmp_path_factory):
    with tool_server(NOTES_SERVER, tmp_path_factory.mktemp("notes")) as server:
        yield server


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    logs = tmp_path_factory.mktemp("hostile")
    with tool_server(HOSTILE_SERVER, logs, FLOOD_BYTES=5_000_000) as server:
        yield server


@pytest.fixture(scope="module")
def gw(notes, hostile, tmp_path_factory):
    """The gateway in front of both, with the course's two clients and the anonymous one."""
    work = tmp_path_factory.mktemp("gateway")
    with gateway(
        gateway_catalog(notes, hostile),
        work,
        TOKEN_AGENT=AGENT_TOKEN,
        TOKEN_TESTER=TESTER_TOKEN,
        GATEWAY_MAX_RESULT_BYTES=1_000_000,
        GATEWAY_CALL_TIMEOUT_SECONDS=15,
    ) as server:
        yield server


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}
