"""make lesson-08 for real (marker `container`, `make mcp-test`): Compose v2 and v1, a research
answer over MCP, the on-demand tool container's limits, secrets and network, the Docker guard,
and lesson-08-down leaving nothing."""

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port

pytestmark = [pytest.mark.container, pytest.mark.xdist_group("lesson08-containers")]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "lesson08" / "compose.yaml"
# Our own project name and ports per checkout: a second clone's run beside this one (or a
# learner's lesson08) is left alone.
PROJECT = "lesson08test" + hashlib.sha256(str(REPO).encode()).hexdigest()[:6]
AGENT_PORT, MCP_PORT = free_port(), free_port()
SECRET = "sk-agent-key-that-no-tool-may-see"


def composes() -> list[list[str]]:
    found = [["docker", "compose"]]
    if shutil.which("docker-compose"):
        found.append(["docker-compose"])
    return found


def sh(*args, check=True, env=None, timeout=300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
    return done


def leftovers() -> list[str]:
    out = []
    for kind, fmt in (
        ("ps -a", "{{.Names}}"),
        ("network ls", "{{.Name}}"),
        ("volume ls", "{{.Name}}"),
    ):
        names = sh("docker", *kind.split(), "--format", fmt).stdout.split()
        out += [n for n in names if n.startswith(PROJECT)]
    return out


def down(compose: list[str], env: dict) -> None:
    ids = sh("docker", "ps", "-aq", "--filter", f"label=lesson08.owner={PROJECT}").stdout.split()
    if ids:
        sh("docker", "rm", "-f", *ids)
    sh(*compose, "-p", PROJECT, "-f", COMPOSE_FILE, "down", "-v", "--remove-orphans", env=env)


def wait_healthy(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


@pytest.mark.parametrize("compose", composes(), ids=lambda c: " ".join(c))
def test_lesson_08_in_compose(compose, tmp_path):
    # Our own project name and owner label: a learner's lesson08 stays untouched.
    compose_file = tmp_path / "compose.yaml"
    text = COMPOSE_FILE.read_text().replace("lesson08_tools", f"{PROJECT}_tools")
    text = text.replace("GATEWAY_OWNER: lesson08", f"GATEWAY_OWNER: {PROJECT}")
    text = text.replace("GUARD_OWNER: lesson08", f"GUARD_OWNER: {PROJECT}")
    compose_file.write_text(text)
    shutil.copy(COMPOSE_FILE.parent / "catalog.yaml", tmp_path / "catalog.yaml")
    env = {
        **os.environ,
        "LESSON08_PORT": str(AGENT_PORT),
        "LESSON08_MCP_PORT": str(MCP_PORT),
        "LESSON08_AGENT_TOKEN": "test-token",
        "OPENAI_API_KEY": "",
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        "OFFLINE_TOKEN_DELAY_MS": "0",
    }
    base = [*compose, "-p", PROJECT, "-f", compose_file]
    try:
        sh(*base, "up", "-d", env=env)
        wait_healthy(f"http://127.0.0.1:{AGENT_PORT}/ready")
        wait_healthy(f"http://127.0.0.1:{MCP_PORT}/health")
        # No tool container before the first use.
        owner = f"label=lesson08.owner={PROJECT}"
        assert sh("docker", "ps", "-q", "--filter", owner).stdout.strip() == ""

        answer = httpx.post(
            f"http://127.0.0.1:{AGENT_PORT}/v1/research",
            json={"query": "Why use a multi-stage Docker build?"},
            timeout=90,
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["sources"][0]["url"].startswith("notes/multi-stage-builds.md")

        # The tool server started on demand, with its limits, and without the agent's secrets.
        (notes,) = sh("docker", "ps", "-q", "--filter", owner).stdout.split()
        info = json.loads(sh("docker", "inspect", notes).stdout)[0]
        host = info["HostConfig"]
        assert host["Memory"] == 256 * 1024 * 1024 and host["PidsLimit"] == 64
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert info["Config"]["User"] == "65534:65534"
        assert not any(e.startswith("OPENAI_API_KEY") for e in info["Config"]["Env"])
        # ...and it cannot reach the internet (its only network is internal).
        probe = "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)"
        reach = sh("docker", "exec", notes, "python", "-c", probe, check=False)
        assert reach.returncode != 0 and (
            "unreachable" in reach.stderr or "timed out" in reach.stderr
        )

        # The call log line of the agent's call.
        logs = sh(*base, "logs", "gateway", env=env).stdout
        calls = [
            json.loads(line[line.index("{") :])
            for line in logs.splitlines()
            if '"tool_call"' in line
        ]
        assert calls and calls[-1]["client"] == "agent" and calls[-1]["outcome"] == "ok"

        # The gateway cannot use Docker for anything else: a privileged container is refused.
        escape = (
            "import docker; c = docker.from_env(); "
            "c.containers.run('lesson08-notes', 'id', privileged=True, "
            "volumes={'/': {'bind': '/host'}}, remove=True)"
        )
        refused = sh(*base, "exec", "-T", "gateway", "python", "-c", escape, check=False, env=env)
        assert refused.returncode != 0 and "refused by the lesson 08 Docker guard" in refused.stderr
        listing = "import docker; print(docker.from_env().containers.list())"
        refused = sh(*base, "exec", "-T", "gateway", "python", "-c", listing, check=False, env=env)
        assert "refused by the lesson 08 Docker guard" in refused.stderr
    finally:
        down(compose, env)
    assert leftovers() == []
