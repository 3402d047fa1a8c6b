"""research-agent/docker-compose.yml: static checks (`make test`), live runs (`make compose-test`).

Learners have one of three Composes: Debian's `docker-compose` 1.29 (v1), `docker-compose` as
Compose v2 (Docker Desktop, the standalone install) or the `docker compose` plugin. The file must
work with all of them, so the live run (marker `container`) repeats itself for each spelling in
COMPOSE_COMMANDS (default: `docker-compose` and `docker compose`), typed as the docs show it. Under
its own project name and a free port, offline and without .env, it checks that both services become
healthy, that a repeated question is served from Redis, that the agent still answers once Redis is
stopped, that `stop` lets a long answer finish, and that `down -v` leaves nothing behind.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port
from tests.test_container import OFFLINE_MODEL, BackgroundStream, get_json, post_json

AGENT_DIR = Path(__file__).resolve().parents[1] / "research-agent"
COMPOSE_FILE = AGENT_DIR / "docker-compose.yml"
COMPOSE_FILES = sorted(AGENT_DIR.glob("docker-compose*.y*ml"))
DEV_FILE = AGENT_DIR / "docker-compose.dev.yml"
ENV_EXAMPLE = AGENT_DIR / ".env.example"
# Settings of .env.example that the stack does not pass on: the image fixes where the app listens
# and where its files are, the stack gives the agent no Docker API for lesson 04's sandbox, and
# it mounts no key file (API_KEYS comes from .env).
NOT_PASSED = {"HOST", "PORT", "DOCS_DIR", "API_KEYS_FILE"} | {
    "SANDBOX_ENABLED",
    "SANDBOX_IMAGE",
    "SANDBOX_RUNTIME",
    "SANDBOX_TIMEOUT_SECONDS",
}
UP_TIMEOUT = 900  # includes building the image: Compose v1 builds without BuildKit's cache
HEALTHY_TIMEOUT = 240
SPELLINGS = [
    s.strip()
    for s in os.environ.get("COMPOSE_COMMANDS", "docker-compose,docker compose").split(",")
    if s.strip()
]


def seconds(duration: str) -> float:
    return sum(
        float(n) * {"h": 3600, "m": 60, "s": 1}[unit]
        for n, unit in re.findall(r"([\d.]+)(h|m|s)", duration)
    )


def settings_in_env_example() -> set[str]:
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), flags=re.M))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any app setting, so the shell cannot change what is tested."""
    names = settings_in_env_example() | {"AGENT_PORT"}
    return {k: v for k, v in os.environ.items() if k not in names} | extra


# --- Static: what the file promises --------------------------------------------------------------


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_files_use_nothing_compose_v1_rejects(path):
    """Debian's docker-compose 1.29 rejects `env_file: {path, required}` and `build.secrets`."""
    data = yaml.safe_load(path.read_text())
    assert "version" not in data, "the top-level `version:` key is obsolete"
    for name, service in data["services"].items():
        env_file = service.get("env_file", [])
        assert all(isinstance(entry, str) for entry in env_file if env_file), (
            f"{name}: env_file entries as {{path, required}} need Compose 2.24+"
        )
        build = service.get("build", {})
        assert not (isinstance(build, dict) and "secrets" in build), (
            f"{name}: build.secrets is v2 only"
        )
    assert "secrets" not in data


def test_both_services_have_healthchecks_and_the_agent_waits_for_redis(compose):
    services = compose["services"]
    assert set(services) == {"agent", "redis"}
    for service in services.values():
        test = service["healthcheck"]["test"]
        assert "curl" not in " ".join(test) and "start_interval" not in service["healthcheck"]
        assert service["restart"] == "unless-stopped"
    assert services["agent"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["agent"]["environment"]["REDIS_URL"].startswith("redis://redis:")


def test_shutdown_budget_lets_every_answer_finish(compose):
    """The grace covers the longest answer; stop_grace_period covers drain + grace + a margin."""
    sys.path.insert(0, str(AGENT_DIR))
    from app.config import Settings

    fields = Settings.model_fields
    agent = compose["services"]["agent"]
    grace = float(agent["environment"]["GRACEFUL_SHUTDOWN_SECONDS"])
    drain = fields["SHUTDOWN_DRAIN_SECONDS"].default if "SHUTDOWN_DRAIN_SECONDS" in fields else 0
    assert grace == 30 and grace >= fields["REQUEST_TIMEOUT_SECONDS"].default
    assert seconds(agent["stop_grace_period"]) == 35 > drain + grace


def test_every_setting_of_env_example_reaches_the_agent(compose):
    """.env is optional: Compose (v1 and v2) fills ${NAME:-} from it; empty means the default."""
    environment = compose["services"]["agent"]["environment"]
    missing = settings_in_env_example() - NOT_PASSED - set(environment)
    assert not missing, f"in .env.example but never passed to the agent: {sorted(missing)}"
    for name, value in environment.items():
        assert value == f"${{{name}:-}}" or name in {"REDIS_URL", "GRACEFUL_SHUTDOWN_SECONDS"}, (
            f"{name}: {value!r}"
        )
    volume = compose["services"]["redis"]["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def compose_config(spelling: str, folder: Path, *files: str) -> dict:
    """`config`: the files merged and every ${...} filled, as this Compose reads them."""
    if shutil.which(spelling.split()[0]) is None:
        pytest.skip(f"`{spelling}` is not installed (make compose-test installs it)")
    version = subprocess.run([*spelling.split(), "version"], capture_output=True, timeout=60)
    if version.returncode != 0:  # `docker` without the Compose plugin
        pytest.skip(f"`{spelling}` does not work here (make compose-test installs it)")
    names = [arg for name in files or ("docker-compose.yml",) for arg in ("-f", name)]
    result = subprocess.run(
        [*spelling.split(), *names, "config"],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_dotenv_is_optional_and_read_when_present(spelling, tmp_path):
    shutil.copy(COMPOSE_FILE, tmp_path / "docker-compose.yml")
    without = compose_config(spelling, tmp_path)["services"]["agent"]["environment"]
    assert without["OPENAI_API_KEY"] in ("", None) and without["MODEL_NAME"] in ("", None)

    (tmp_path / ".env").write_text(
        "MODEL_NAME=model-from-dotenv\nREDIS_URL=redis://elsewhere:1/0\n"
    )
    with_env = compose_config(spelling, tmp_path)["services"]["agent"]["environment"]
    assert with_env["MODEL_NAME"] == "model-from-dotenv"
    assert with_env["REDIS_URL"] == "redis://redis:6379/0", "the project's Redis must win over .env"


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_dev_override_parses_and_mounts_the_code_with_reload(spelling):
    config = compose_config(spelling, AGENT_DIR, COMPOSE_FILE.name, DEV_FILE.name)
    agent = config["services"]["agent"]
    assert "--reload" in agent["command"]
    targets = {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in agent["volumes"]}
    assert targets >= {"/app/app", "/app/notes"}


# --- Live: up / down with each spelling ----------------------------------------------------------


class Project:
    def __init__(self, spelling: str):
        self.spelling = spelling
        self.name = f"research-agent-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # 100 ms a token: a streamed answer takes about 20 s, longer than `docker stop` allows.
        self.env = clean_env(AGENT_PORT=str(self.port), OFFLINE_TOKEN_DELAY_MS="100")

    def compose(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.spelling.split(), "-p", self.name, *args],
            cwd=AGENT_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.spelling} {' '.join(args)} failed:\n{result.stderr[-3000:]}\n{self.logs()}"
            )
        return result

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "100", check=False).stdout

    def up(self) -> None:
        """`up` as the docs type it: v2 waits for healthy itself; v1 has no --wait, so we poll."""
        if self.compose("up", "--help", check=False).stdout.find("--wait") >= 0:
            self.compose("up", "-d", "--build", "--wait", timeout=UP_TIMEOUT)
        else:
            self.compose("up", "-d", "--build", timeout=UP_TIMEOUT)
        deadline = time.monotonic() + HEALTHY_TIMEOUT
        while (health := self.health()) != {"agent": "healthy", "redis": "healthy"}:
            assert time.monotonic() < deadline, f"not healthy after {HEALTHY_TIMEOUT}s: {health}"
            time.sleep(1)

    def health(self) -> dict[str, str]:
        ids = self.compose("ps", "-q").stdout.split()
        if not ids:
            return {}
        out = subprocess.run(
            [
                "docker",
                "inspect",
                "--format",
                '{{index .Config.Labels "com.docker.compose.service"}} {{.State.Health.Status}}',
                *ids,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return dict(line.split() for line in out.splitlines() if len(line.split()) == 2)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.split()[0]

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


@pytest.fixture(scope="module", params=SPELLINGS)
def project(request):
    if shutil.which(request.param.split()[0]) is None:
        pytest.fail(
            f"`{request.param}` is not installed: run `make compose-test`, which installs it"
        )
    if (AGENT_DIR / ".env").exists():
        pytest.fail(
            "research-agent/.env exists: move it aside, this test checks the setup without it"
        )
    box = Project(request.param)
    failures_before = request.session.testsfailed
    try:
        box.up()
        yield box
        if request.session.testsfailed > failures_before:
            reporter = request.config.pluginmanager.get_plugin("terminalreporter")
            reporter.write_line(f"\n---- {box.spelling} logs ({box.name}) ----\n{box.logs()}")
    finally:
        # --rmi local: the image built for this project (named after it) goes too.
        box.compose("down", "-v", "--remove-orphans", "--rmi", "local", check=False, timeout=180)


@pytest.mark.container
def test_up_serves_the_offline_agent_with_the_redis_cache(project):
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
def test_compose_stop_lets_an_answer_longer_than_docker_stops_default_finish(project):
    """GRACEFUL_SHUTDOWN_SECONDS=30 and stop_grace_period 35s: a stream still running 10 s after
    SIGTERM (past Docker's default 10 s and the app's default 8 s grace) ends with [DONE]."""
    stream = BackgroundStream(
        f"{project.url}/v1/research/stream", "What does a multi-stage build change?"
    )
    assert stream.first_token.wait(60), "no token arrived from the stream"
    agent = project.container("agent")
    stop_started = time.monotonic()
    project.compose("stop", "agent", timeout=90)
    stream.thread.join(60)
    assert stream.error is None, f"the stream broke on compose stop: {stream.error!r}"
    assert stream.events[-1] == ("", "[DONE]"), stream.events[-3:]
    ran_after_stop = stream.received[-1][0] - stop_started
    assert ran_after_stop > 10, (
        f"the answer ended {ran_after_stop:.1f}s after the stop: too short to test the grace period"
    )
    state = json.loads(
        subprocess.run(
            ["docker", "inspect", "--format", "{{json .State}}", agent],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    )
    assert state["ExitCode"] != 137, "the agent was SIGKILLed"


@pytest.mark.container
def test_down_v_removes_containers_network_and_volume(project):
    assert project.volumes(), "the named Redis volume should exist while the project is up"
    project.compose("down", "-v", "--remove-orphans", "--rmi", "local", timeout=180)
    left = project.compose("ps", "-q").stdout.split()
    assert left == [], f"containers left after down: {left}"
    assert project.volumes() == [], "down -v left the Redis volume behind"
