"""The research agent's Compose stack gives its containers no capability they do not use, and no
way to gain one (`no-new-privileges`: a setuid program runs with the caller's rights). Before:
Docker's default set (14 capabilities, CHOWN, SETUID, NET_RAW among them) in every container."""

from pathlib import Path

import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "research-agent" / "docker-compose.yml"
# What a service may add back, and why: the official redis image starts as root, gives /data to
# `redis` (CHOWN) and switches to it (SETGID, SETUID).
ADDED = {"redis": {"CHOWN", "SETGID", "SETUID"}}


def privilege_problems(services: dict) -> list[str]:
    problems = []
    for name, service in services.items():
        if service.get("cap_drop") != ["ALL"]:
            problems.append(f"{name}: keeps Docker's default capabilities (cap_drop: [ALL])")
        if set(service.get("cap_add", [])) - ADDED.get(name, set()):
            problems.append(f"{name}: adds {sorted(service['cap_add'])} back")
        if "no-new-privileges" not in service.get("security_opt", []):
            problems.append(f"{name}: a setuid program could gain privileges (no-new-privileges)")
    return problems


def test_every_service_drops_every_capability_it_does_not_use():
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    assert privilege_problems(services) == []


def test_the_check_catches_a_service_with_the_defaults():
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    services["agent"].pop("cap_drop")
    services["edge"]["security_opt"] = []
    services["redis"]["cap_add"].append("NET_ADMIN")
    assert len(privilege_problems(services)) == 3
