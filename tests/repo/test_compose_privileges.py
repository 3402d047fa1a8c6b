"""Every service of every lesson's Compose file drops every capability and cannot gain one
(`no-new-privileges`: a setuid program runs with its caller's rights), adding back only what its
image's entrypoint uses. Before: lesson 12's edge, Postgres in lessons 10 and 12, lesson 09's viewer
and ingest, and lesson 08's pins Redis kept Docker's default set (CHOWN, SETUID, NET_RAW...).
Lesson 03's own file: tests/lesson_03/test_privileges.py."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
# What an image may add back, and why. The official postgres and redis images start as root, give
# their data folder to their user (CHOWN; Postgres also sets its mode: FOWNER) and switch to it
# (SETGID, SETUID). Checked: both start, and Postgres again on its volume, with these alone.
ADDED = {
    "postgres": {"CHOWN", "FOWNER", "SETGID", "SETUID"},
    "redis": {"CHOWN", "SETGID", "SETUID"},
}
# Overrides, merged into the file they extend as Compose merges them.
EXTENDS = {"code/lesson09/compose.traces.yaml": "research-agent/docker-compose.yml"}


def services_of(path: str) -> dict:
    services = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))["services"]
    if path in EXTENDS:
        base = services_of(EXTENDS[path])
        services = {name: {**base.get(name, {}), **s} for name, s in services.items()} | {
            name: s for name, s in base.items() if name not in services
        }
    return services


def compose_files() -> list[str]:
    found = []
    for path in sorted(ROOT.glob("code/lesson*/*.y*ml")):
        text = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(text, dict) and "services" in text:
            found.append(str(path.relative_to(ROOT)))
    return found


def privilege_problems(services: dict) -> list[str]:
    problems = []
    for name, service in services.items():
        image = str(service.get("image", "")).rsplit("/", 1)[-1].split(":")[0]
        if service.get("cap_drop") != ["ALL"]:
            problems.append(f"{name}: keeps Docker's default capabilities (cap_drop: [ALL])")
        if set(service.get("cap_add", [])) - ADDED.get(image, set()):
            problems.append(f"{name}: adds {sorted(service['cap_add'])} back")
        options = service.get("security_opt", [])
        if not {"no-new-privileges", "no-new-privileges:true"} & set(options):
            problems.append(f"{name}: a setuid program could gain privileges (no-new-privileges)")
    return problems


def test_the_lessons_compose_files_are_all_found():
    assert {
        "code/lesson07/compose.yaml",
        "code/lesson08/compose.yaml",
        "code/lesson08/replicas.yaml",
        "code/lesson09/compose.traces.yaml",
        "code/lesson10/compose.yaml",
        "code/lesson12/compose.yaml",
    } <= set(compose_files())


@pytest.mark.parametrize("path", compose_files())
def test_every_service_drops_every_capability_it_does_not_use(path):
    assert privilege_problems(services_of(path)) == []


def test_the_check_catches_a_service_with_the_defaults():
    services = services_of("code/lesson12/compose.yaml")
    services["edge"].pop("cap_drop")
    services["agent1"]["security_opt"] = []
    services["postgres"]["cap_add"] = ["NET_ADMIN"]
    assert len(privilege_problems(services)) == 3
