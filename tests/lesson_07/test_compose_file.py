"""code/lesson07/compose.yaml, statically (`make test`): what `--scale`, AOF and the lesson's
names need, and that both Composes read it (the live runs: test_containers.py, make pubsub-test)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.docker_cli import NO_COMPOSE_V2, compose_v2

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "code" / "lesson07" / "compose.yaml"
SERVICES = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
AGENTS = ("triage", "concepts", "debug", "exercise", "progress")


def test_the_services_are_named_as_the_lesson_says():
    assert set(SERVICES) == {"redis", "gateway", *AGENTS}


@pytest.mark.parametrize("name", AGENTS)
def test_an_agent_can_be_scaled(name):
    """No fixed container name and no host port: `--scale` can run several copies."""
    service = SERVICES[name]
    assert "container_name" not in service and "ports" not in service
    assert service["command"] == ["-m", "lesson07.event_agents", name]
    assert service["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_fsyncs_every_write_to_its_append_only_file():
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "always"


def test_redis_takes_its_users_from_a_secret_and_has_a_memory_bound():
    """`default` off and a user per service (code/lesson07/redis_users.py), from the secret."""
    redis = SERVICES["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--aclfile") + 1] == "/run/secrets/redis_users"
    assert "requirepass" not in " ".join(command) and "protected-mode" not in " ".join(command)
    assert redis["command"][redis["command"].index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["command"][redis["command"].index("--maxmemory") + 1] == "256mb"


@pytest.mark.parametrize("name", ["gateway", *AGENTS])
def test_every_service_has_a_memory_limit_its_own_redis_user_and_only_its_password(name):
    service = SERVICES[name]
    assert service["mem_limit"]
    assert service["environment"]["REDIS_USERNAME"] == name
    mine = {"source": f"{name}_password", "target": "redis_password"}
    assert service["secrets"] == ([mine, "token_key"] if name == "gateway" else [mine])


def test_redis_has_a_memory_limit_and_only_its_users_and_its_health_password():
    assert SERVICES["redis"]["mem_limit"]
    assert SERVICES["redis"]["secrets"] == ["redis_users", "redis_health"]


@pytest.mark.parametrize("name", ["gateway", *AGENTS])
def test_every_agent_can_reach_a_model_server_on_this_machine_by_name(name):
    """`localhost` in a container is the container: a local model is host.docker.internal."""
    assert SERVICES[name]["extra_hosts"] == ["host.docker.internal:host-gateway"]


def test_the_gateway_is_published_on_loopback_only():
    assert SERVICES["gateway"]["ports"] == ["127.0.0.1:${LESSON07_PORT:-8070}:8070"]


@pytest.mark.parametrize("compose", [("docker-compose",), ("docker", "compose")])
def test_compose_reads_the_file(compose):
    if compose == ("docker", "compose") and not compose_v2():
        pytest.skip(NO_COMPOSE_V2)
    if shutil.which(compose[0]) is None:
        pytest.skip(f"{compose[0]} is not installed (make pubsub-test runs both for real)")
    done = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_redis_is_never_root_and_holds_no_capabilities():
    """The official image drops to `redis` only for a command that starts with redis-server; this
    one starts with sh, so without `user:` Redis ran as root, every capability kept."""
    redis = SERVICES["redis"]
    assert redis["user"] == "redis"
    assert redis["cap_drop"] == ["ALL"] and "no-new-privileges:true" in redis["security_opt"]
    assert redis["read_only"] is True and redis["tmpfs"] == ["/tmp"]


@pytest.mark.parametrize("name", ["gateway", *AGENTS])
def test_no_agent_holds_a_capability_or_can_gain_one(name):
    """Each agent runs the model's and the libraries' code: no capability, and no setuid program
    can give it one. Before, Docker's default set. From inside each: test_containers.py."""
    service = SERVICES[name]
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert "no-new-privileges" in service["security_opt"]
