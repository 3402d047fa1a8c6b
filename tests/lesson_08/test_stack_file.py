"""Lesson 08's Compose file, catalog and Makefile agree with each other (no Docker needed): both
tool servers are in the stack, the python server reaches a sandbox guard of its own, and every
name the lesson gives Docker comes from the Compose project's name."""

import re
from pathlib import Path

import yaml

from research_agent import LABEL, SandboxConfig
from support.lessons import makefile_text

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "code" / "lesson08" / "compose.yaml").read_text())
REPLICAS = yaml.safe_load((REPO / "code" / "lesson08" / "replicas.yaml").read_text())
CATALOG = yaml.safe_load((REPO / "code" / "lesson08" / "catalog.yaml").read_text())
MAKEFILE = makefile_text()  # the root Makefile and the lessons' lesson.mk files
PROJECT = "${COMPOSE_PROJECT_NAME:-lesson08}"


def service(name: str) -> dict:
    return COMPOSE["services"][name]


def server(name: str) -> dict:
    return next(s for s in CATALOG["servers"] if s["name"] == name)


def recipe(target: str) -> str:
    found = re.search(rf"^{target}:.*\n((?:\t.*\n|[^\S\n]*\n)*)", MAKEFILE, re.M)
    assert found, target
    return found[0]


def test_the_python_server_is_in_the_catalog_beside_notes_in_its_own_image():
    assert [s["name"] for s in CATALOG["servers"]] == ["notes", "python"]
    assert server("python")["image"] == "lesson08-python"
    assert "--target python -t lesson08-python" in recipe("lesson-08-images")
    # The sandboxes run lesson 04's image: building the lesson's images builds it.
    assert "sandbox-image" in recipe("lesson-08-images").splitlines()[0]
    assert "lesson-08-images" in recipe("mcp-test").splitlines()[0]
    tools_guard = service("docker-guard")["environment"]
    assert set(tools_guard["GUARD_IMAGES"].split(",")) == {s["image"] for s in CATALOG["servers"]}


def test_the_python_server_talks_to_a_sandbox_only_guard_on_its_network():
    guard = service("sandbox-guard")
    env = guard["environment"]
    assert env["GUARD_POLICY"] == "sandbox"
    assert guard["command"] == ["python", "-m", "lesson08.docker_guard"]
    assert env["GUARD_IMAGES"] == SandboxConfig().image == "agent-sandbox:python"
    # The python server gets this guard's address, not the socket; the guard sits on a network
    # of its own, with no way out, that no service of the stack is on and the gateway joins the
    # python server to (and its guard lets it join) once started.
    python = server("python")
    assert python["env"]["DOCKER_HOST"] == "tcp://sandbox-guard:2375"
    assert guard["networks"] == ["sandbox"] and COMPOSE["networks"]["sandbox"]["internal"] is True
    assert COMPOSE["networks"]["sandbox"]["name"] == f"{PROJECT}_sandbox"
    others = [n for n, s in COMPOSE["services"].items() if n != "sandbox-guard"]
    assert not [name for name in others if "sandbox" in service(name).get("networks", [])]
    assert python["network"] == "{owner}_sandbox" and "network" not in server("notes")
    assert service("gateway")["environment"]["GATEWAY_OWNER"] == PROJECT  # {owner}
    joins = f"python={PROJECT}_sandbox"
    assert service("docker-guard")["environment"]["GUARD_SERVER_NETWORKS"] == joins
    assert service("gateway")["environment"]["GATEWAY_TOOLS_NETWORK"] == f"{PROJECT}_tools"
    assert COMPOSE["networks"]["tools"]["name"] == f"{PROJECT}_tools"
    # The python server labels its sandboxes agent-sandbox.owner=<the gateway's owner>, which the
    # launcher passes it; the guard allows that owner's containers only.
    assert env["GUARD_OWNER"] == service("gateway")["environment"]["GATEWAY_OWNER"] == PROJECT
    assert f"{LABEL}.owner" == "agent-sandbox.owner"
    # Each run holds an attached stream and an event stream through the guard.
    most = int(python["env"]["SANDBOX_MAX_CONCURRENT"])
    assert int(env["GUARD_MAX_STREAMS"]) >= 2 * most


def test_the_python_server_labels_its_sandboxes_with_the_owner_the_launcher_passes(monkeypatch):
    from lesson08.catalog import ServerEntry
    from lesson08.launcher import DockerLauncher

    launcher = DockerLauncher(owner="copy2", network="copy2_tools", internet_network=None)
    env = launcher.run_kwargs(ServerEntry(**server("python")))["environment"]
    assert env["GATEWAY_OWNER"] == "copy2" and env["DOCKER_HOST"] == "tcp://sandbox-guard:2375"
    source = (REPO / "code" / "lesson08" / "python_server.py").read_text()
    assert "Sandbox(owner=settings.GATEWAY_OWNER)" in source


def test_every_name_given_to_docker_is_the_projects():
    gateway = service("gateway")["environment"]
    tools_guard = service("docker-guard")["environment"]
    assert gateway["GATEWAY_OWNER"] == tools_guard["GUARD_OWNER"] == PROJECT
    assert gateway["GATEWAY_TOOLS_NETWORK"] == tools_guard["GUARD_NETWORK"] == f"{PROJECT}_tools"
    # make sets the project's name where Compose v1 reads it too, and lesson-08-down removes only
    # what carries this project's name.
    assert "COMPOSE_PROJECT_NAME=$(LESSON08_PROJECT)" in MAKEFILE
    down = recipe("lesson-08-down")
    assert "lesson08.owner agent-sandbox.owner" in down
    assert "label=$$label=$(LESSON08_PROJECT)" in down
    assert not re.search(r"lesson08\.owner=lesson08\b", down)


def test_the_agent_can_reach_a_model_server_on_the_host():
    agent = service("agent")
    assert agent["environment"]["OPENAI_BASE_URL"] == "${OPENAI_BASE_URL:-}"
    assert agent["extra_hosts"] == ["host.docker.internal:host-gateway"]
    # ...and the gateway a catalog url: on the host (the challenge).
    assert service("gateway")["extra_hosts"] == ["host.docker.internal:host-gateway"]


def test_a_learners_client_is_one_make_target_away_from_the_lessons_venv():
    """The SDK's 2.x client, from lesson 08's own environment, which the target builds."""
    target = recipe("lesson-08-client")
    assert "$(LESSON08_VENV)/.installed" in target.splitlines()[0]
    assert "$(LESSON08_VENV)/bin/python -m lesson08.mcp_client" in target


def test_no_service_holds_a_capability_or_can_gain_one():
    """Every container of both files but the pins' Redis: no capability, and no setuid program
    can give it one. Before, the agent (which runs the model's and the libraries' code) and the
    replicas' edge kept Docker's default set. The official redis image starts as root and
    switches to `redis` itself, so `pins` keeps what it needs. From inside: test_containers.py,
    test_replicas_containers.py."""
    held = {("compose.yaml", name): s for name, s in COMPOSE["services"].items()}
    held |= {("replicas.yaml", name): s for name, s in REPLICAS["services"].items()}
    del held["replicas.yaml", "pins"]
    assert {
        ("compose.yaml", "agent"),
        ("replicas.yaml", "agent"),
        ("replicas.yaml", "edge"),
    } <= set(held)
    for where, definition in held.items():
        assert definition.get("cap_drop") == ["ALL"], where
        assert "cap_add" not in definition, where
        assert "no-new-privileges" in definition.get("security_opt", []), where
