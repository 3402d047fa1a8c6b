"""The gateway's bounds in the lesson's own Compose project (marker `container`, `make mcp-test`):
the operator's endpoints, the documented re-pin, the idle stop and the next start, an initialize
flood against the running gateway that leaves nothing held, its memory limit."""

import asyncio
import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from support.mcp_servers import GATEWAY, LESSON08_PYTHON
from support.ports import free_port
from support.server import offline_environment
from tests.support.mcp_clients import sdk_session

from .conftest import INITIALIZE, MCP_HEADERS
from .test_containers import sh, wait_healthy

pytestmark = [pytest.mark.container, pytest.mark.xdist_group("lesson08-containers")]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "code" / "lesson08" / "compose.yaml"
PROJECT = "lesson08gw" + hashlib.sha256(str(REPO).encode()).hexdigest()[:6]
# make lesson-08-images builds these; another tag tests another build.
GATEWAY_IMAGE = os.environ.get("LESSON08_GATEWAY_IMAGE", "lesson08-gateway")
NOTES_IMAGE = os.environ.get("LESSON08_NOTES_IMAGE", "lesson08-notes")
OPERATOR, AGENT = "operator-token-for-this-test", "agent-token-for-this-test"


def project_files(folder: Path) -> Path:
    """The lesson's compose file and catalog with our names, short idle times and test images."""
    text = COMPOSE_FILE.read_text()
    for old, new in (
        ("image: lesson08-gateway", f"image: {GATEWAY_IMAGE}"),
        ("GUARD_IMAGES: lesson08-notes", f"GUARD_IMAGES: {NOTES_IMAGE}"),
        (
            "GATEWAY_OPERATOR_TOKEN: ${LESSON08_OPERATOR_TOKEN:-}",
            "GATEWAY_OPERATOR_TOKEN: ${LESSON08_OPERATOR_TOKEN:-}\n"
            '      GATEWAY_IDLE_SWEEP_SECONDS: "1"',
        ),
    ):
        assert old in text, old
        text = text.replace(old, new)
    (folder / "compose.yaml").write_text(text)
    catalog = (COMPOSE_FILE.parent / "catalog.yaml").read_text()
    catalog = catalog.replace("image: lesson08-notes", f"image: {NOTES_IMAGE}")
    catalog = catalog.replace("idle_seconds: 120", "idle_seconds: 3")
    # A whole CPU: the notes server must answer its health check in the launcher's 30 s on a
    # loaded machine too.
    (folder / "catalog.yaml").write_text(catalog.replace("cpus: 0.5", "cpus: 1.0"))
    return folder / "compose.yaml"


async def list_and_call(url: str, headers: dict) -> tuple[list[str], bool]:
    async with sdk_session(url, headers) as session:
        names = [t.name for t in (await session.list_tools()).tools]
        result = await session.call_tool("search_notes", {"query": "health checks"})
        if result.isError:  # shown with a failure: what the gateway said
            print(f"search_notes failed: {result.content}")
        return names, result.isError


async def flood(url: str, count: int) -> list[httpx.Response]:
    answers = []
    async with httpx.AsyncClient(timeout=60) as http:
        for _ in range(count // 4):
            answers += await asyncio.gather(
                *(http.post(url, json=INITIALIZE, headers=MCP_HEADERS) for _ in range(4))
            )
    return answers


def use(url: str, headers: dict, base: list, env: dict) -> tuple[list[str], bool]:
    """List and call; when the container's cold start outlasted the launcher's 30 s wait (a loaded
    machine: the gateway logs "did not become healthy"), wait for its health check and retry once.
    A gateway that never started it (a dead session kept) still fails."""
    got = asyncio.run(list_and_call(url, headers))
    logs = sh(*base, "logs", "gateway", env=env).stdout
    if got != (["search_notes"], False) and "did not become" in logs:
        deadline = time.monotonic() + 300
        while True:
            ids = notes_containers()
            health = sh("docker", "inspect", "-f", "{{.State.Health.Status}}", *ids, check=False)
            if ids and health.stdout.split() == ["healthy"]:
                break
            assert time.monotonic() < deadline, logs[-3000:]
            time.sleep(2)
        got = asyncio.run(list_and_call(url, headers))
    return got


def notes_containers(server: str = "notes") -> list[str]:
    """A server's containers (the notes server's unless named)."""
    owner = f"label=lesson08.owner={PROJECT}"
    label = f"label=lesson08.server={server}"
    return sh("docker", "ps", "-aq", "--filter", owner, "--filter", label).stdout.split()


def test_the_gateway_in_compose_keeps_no_session_repins_and_restarts_idle_servers(tmp_path):
    mcp_port = free_port()
    env = {
        **os.environ,
        "LESSON08_MCP_PORT": str(mcp_port),
        "LESSON08_AGENT_TOKEN": AGENT,
        "LESSON08_OPERATOR_TOKEN": OPERATOR,
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        # The owner labels and the tools network take the project's name from here (as make does).
        "COMPOSE_PROJECT_NAME": PROJECT,
    }
    base = ["docker", "compose", "-p", PROJECT, "-f", project_files(tmp_path)]
    base_url, url = f"http://127.0.0.1:{mcp_port}", f"http://127.0.0.1:{mcp_port}/mcp"
    agent = {"Authorization": f"Bearer {AGENT}"}
    try:
        sh(*base, "up", "-d", "gateway", env=env)
        wait_healthy(base_url + "/health")
        gateway_id = sh(*base, "ps", "-q", "gateway", env=env).stdout.strip()
        info = json.loads(sh("docker", "inspect", gateway_id).stdout)[0]
        assert info["HostConfig"]["Memory"] == 384 * 1024 * 1024

        # Operator endpoints: the operator's token only; the health check learns nothing.
        assert httpx.get(base_url + "/pins").status_code == 401
        assert httpx.get(base_url + "/metrics", headers=agent).status_code == 401
        operator = {"Authorization": f"Bearer {OPERATOR}"}
        assert httpx.get(base_url + "/pins", headers=operator).status_code == 200
        assert httpx.get(base_url + "/health").json() == {"status": "ok"}

        # First use starts the notes container; idle, it is stopped; the next listing and call
        # start it again and work (they used to list [] and say "Tool ... not found").
        assert use(url, agent, base, env) == (["search_notes"], False)
        assert len(notes_containers()) == 1
        # The agent may call search_notes alone: its listing started no other server.
        assert notes_containers("python") == []
        deadline = time.monotonic() + 120
        while notes_containers():
            assert time.monotonic() < deadline, "the idle notes container was never stopped"
            time.sleep(1)
        assert use(url, agent, base, env) == (["search_notes"], False)
        assert len(notes_containers()) == 1

        # The documented re-pin, from the host, acts on the running gateway.
        repin = subprocess.run(
            [LESSON08_PYTHON, GATEWAY, "repin", "notes"],
            env=offline_environment(GATEWAY_URL=base_url, GATEWAY_OPERATOR_TOKEN=OPERATOR),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert repin.returncode == 0 and "re-pinned notes/search_notes" in repin.stdout, (
            repin.stdout + repin.stderr
        )

        # 300 anonymous initialize POSTs: answered or refused by the burst guard, and none
        # leaves a session behind (the gateway keeps none, in either era); the agent still calls.
        answers = asyncio.run(flood(url, 300))
        assert {a.status_code for a in answers} <= {200, 429, 503}
        assert not [a for a in answers if "mcp-session-id" in a.headers]
        # The notes server may have gone idle meanwhile: a cold start again.
        assert use(url, agent, base, env) == (["search_notes"], False)
        stats = sh("docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", gateway_id)
        print(f"gateway memory after the flood: {stats.stdout.strip()}")

        logs = sh(*base, "logs", "gateway", env=env).stdout
        assert "Traceback" not in logs and "ClosedResourceError" not in logs, logs[-4000:]
        assert "not found" not in logs
    finally:
        owned = f"label=lesson08.owner={PROJECT}"  # every server the gateway started
        for container in sh("docker", "ps", "-aq", "--filter", owned).stdout.split():
            sh("docker", "rm", "-f", container, check=False)
        sh(*base, "down", "-v", "--remove-orphans", env=env, check=False)
