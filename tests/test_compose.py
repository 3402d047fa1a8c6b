"""research-agent/docker-compose.yml: static checks (part of `make test`) and a live run (`make compose-test`).

The live run (marker `container`) brings the project up with `docker compose up --wait` under its own
project name and a free port, offline and without .env, then checks that a repeated question is served
from Redis, that the agent still answers once Redis is stopped, and that `down -v` leaves nothing behind.
"""

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port
from tests.test_container import OFFLINE_MODEL, get_json, post_json

AGENT_DIR = Path(__file__).resolve().parents[1] / "research-agent"
COMPOSE_FILE = AGENT_DIR / "docker-compose.yml"
DEV_FILE = AGENT_DIR / "docker-compose.dev.yml"
UVICORN_GRACE_SECONDS = 8  # GRACEFUL_SHUTDOWN_SECONDS, the default main.py gives uvicorn
UP_TIMEOUT = 600  # includes building the image when it is not cached


def seconds(duration: str) -> float:
    return sum(
        float(n) * {"h": 3600, "m": 60, "s": 1}[unit]
        for n, unit in re.findall(r"([\d.]+)(h|m|s)", duration)
    )


# --- Static: what the file promises ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_has_no_obsolete_version_key(compose):
    assert "version" not in compose


def test_both_services_have_healthchecks_and_the_agent_waits_for_redis(compose):
    services = compose["services"]
    assert set(services) == {"agent", "redis"}
    for service in services.values():
        test = service["healthcheck"]["test"]
        assert "curl" not in " ".join(test) and "start_interval" not in service["healthcheck"]
        assert service["restart"] == "unless-stopped"
    assert services["agent"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["agent"]["environment"]["REDIS_URL"].startswith("redis://redis:")


def test_stop_grace_period_leaves_uvicorn_time_to_finish(compose):
    assert seconds(compose["services"]["agent"]["stop_grace_period"]) > UVICORN_GRACE_SECONDS


def test_env_file_is_optional_and_redis_keeps_a_named_volume(compose):
    assert compose["services"]["agent"]["env_file"] == [{"path": ".env", "required": False}]
    volume = compose["services"]["redis"]["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


# --- Live: docker compose up / down --------------------------------------------------------------------


class Project:
    def __init__(self):
        self.name = f"research-agent-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "AGENT_PORT": str(self.port)}

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["docker", "compose", "-p", self.name, *args],
            cwd=AGENT_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} failed:\n{result.stderr}\n{self.logs()}"
            )
        return result

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "100", check=False).stdout

    def volumes(self) -> list[str]:
        out = subprocess.run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={self.name}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return out.split()


@pytest.fixture(scope="module")
def project(request):
    if (AGENT_DIR / ".env").exists():
        pytest.fail(
            "research-agent/.env exists: move it aside, this test checks the offline setup without it"
        )
    box = Project()
    failures_before = request.session.testsfailed
    try:
        box.compose("up", "-d", "--build", "--wait", "--wait-timeout", "180", timeout=UP_TIMEOUT)
        yield box
        if request.session.testsfailed > failures_before:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            reporter.write_line(f"\n---- docker compose logs ({box.name}) ----\n{box.logs()}")
    finally:
        # --rmi local: the image built for this project (named after it) goes too; the build cache stays.
        box.compose("down", "-v", "--remove-orphans", "--rmi", "local", check=False)


@pytest.mark.container
def test_up_wait_serves_the_offline_agent_with_the_redis_cache(project):
    status, _, body = get_json(f"{project.url}/ready")
    assert status == 200, body
    assert body["model"] == OFFLINE_MODEL and body["cache"] == "redis", body


@pytest.mark.container
def test_second_identical_question_is_served_from_the_cache(project):
    query = f"How do health checks work? ({uuid.uuid4().hex[:6]})"
    first = post_json(f"{project.url}/v1/research", {"query": query})
    second = post_json(f"{project.url}/v1/research", {"query": query})
    assert first[0] == 200 and second[0] == 200
    assert first[2]["cached"] is False and second[2]["cached"] is True
    assert second[2]["response"] == first[2]["response"] and second[2]["tokens_used"] == 0


@pytest.mark.container
def test_agent_still_answers_when_redis_is_stopped(project):
    project.compose("stop", "redis")
    status, _, body = post_json(
        f"{project.url}/v1/research", {"query": "What does docker stop do?"}
    )
    assert status == 200, body
    assert body["cached"] is False and body["sources"]
    assert get_json(f"{project.url}/ready")[0] == 200


@pytest.mark.container
def test_down_v_removes_containers_network_and_volume(project):
    assert project.volumes(), "the named Redis volume should exist while the project is up"
    project.compose("down", "-v", "--remove-orphans", "--rmi", "local")
    left = project.compose("ps", "-a", "-q").stdout.split()
    assert left == [], f"containers left after down: {left}"
    assert project.volumes() == [], "down -v left the Redis volume behind"


@pytest.mark.container
def test_dev_override_parses_and_mounts_the_code_with_reload():
    result = subprocess.run(
        [
            "docker",
            "compose",
            "-f",
            COMPOSE_FILE.name,
            "-f",
            DEV_FILE.name,
            "config",
            "--format",
            "json",
        ],
        cwd=AGENT_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    agent = json.loads(result.stdout)["services"]["agent"]
    assert "--reload" in agent["command"]
    assert {v["target"] for v in agent["volumes"]} >= {"/app/app", "/app/notes"}
