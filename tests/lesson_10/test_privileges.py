"""Lesson 10's Compose file gives the edge and the replicas no capability and no way to gain one
(`no-new-privileges`), as the Docker guard already had. Before: Docker's default set in each
replica, which runs the model's and the libraries' code. Postgres adds back only what its
entrypoint uses (tests/repo/test_compose_privileges.py). From inside a replica:
test_containers.py."""

from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "code" / "lesson10" / "compose.yaml"
HELD = {"edge", "agent1", "agent2", "docker-guard"}


def test_the_edge_the_replicas_and_the_guard_drop_every_capability():
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    assert set(services) >= HELD
    for name in HELD:
        assert services[name].get("cap_drop") == ["ALL"], name
        assert "cap_add" not in services[name], name
        assert "no-new-privileges" in services[name].get("security_opt", []), name
