"""The Docker guard lets through the launcher's own create request and refuses any other."""

import copy

import docker
import pytest
from docker.models.containers import _create_container_args
from lesson08_catalog import ServerEntry
from lesson08_docker_guard import Settings, create_problems
from lesson08_launcher import DockerLauncher


def launcher_request() -> tuple[dict, str]:
    """The body and name the Docker SDK sends for the launcher's run_kwargs (API 1.41)."""
    launcher = DockerLauncher(owner="lesson08", network="lesson08_tools", internet_network=None)
    kwargs = launcher.run_kwargs(ServerEntry(name="notes", image="lesson08-notes"))
    kwargs.pop("detach")
    args = _create_container_args({**kwargs, "version": "1.41"})
    name = args.pop("name")
    args.setdefault("command", None)
    api = docker.APIClient(base_url="unix:///nonexistent", version="1.41")
    return api.create_container_config(**args), name


def test_the_launchers_own_request_passes():
    body, name = launcher_request()
    assert create_problems(body, name, Settings()) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda b: b.update(Image="alpine"), "image not in the catalog"),
        (lambda b: b["HostConfig"].update(Privileged=True), "privileged refused"),
        (lambda b: b["HostConfig"].update(Binds=["/:/host"]), "mounts refused"),
        (lambda b: b["HostConfig"].update(CapAdd=["SYS_ADMIN"]), "capabilities"),
        (lambda b: b["HostConfig"].update(NetworkMode="host"), "only the tools network"),
        (lambda b: b["HostConfig"].update(PidMode="host"), "no host namespaces"),
        (lambda b: b["HostConfig"].pop("Memory"), "memory limit required"),
        (lambda b: b["HostConfig"].update(ReadonlyRootfs=False), "read-only"),
        (lambda b: b.update(User="0"), "must run as nobody"),
        (lambda b: b["Labels"].clear(), "owner label missing"),
        (lambda b: b["HostConfig"].update(Devices=[{"PathOnHost": "/dev/kmsg"}]), "devices"),
    ],
)
def test_anything_else_is_refused(change, problem):
    body, name = launcher_request()
    body = copy.deepcopy(body)
    change(body)
    assert any(problem in p for p in create_problems(body, name, Settings()))


def test_a_name_outside_the_owner_is_refused():
    body, _ = launcher_request()
    assert "name must start with the owner" in create_problems(body, "someone-else", Settings())
