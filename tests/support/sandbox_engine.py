"""A test process's sandboxes on the local Docker Engine, for the suites whose servers run
run_python in real containers (lessons 10 and 12): the engine, the sandboxes it starts, followed
live, and none of them left after. Each suite's conftest makes its fixtures of these with its own
image and owner label: `yield from engine_with_image(IMAGE, OWNER)`."""

from collections.abc import Callable, Iterator

import docker
import pytest

from tests.support.docker_cli import ContainerStarts


def engine_with_image(image: str, owner: str) -> Iterator[docker.DockerClient]:
    """The local engine once it answers and has `image` (else the test skips); after the tests,
    the containers labelled agent-sandbox.owner=`owner` removed."""
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(image)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"needs Docker and {image} for run_python's sandbox: {exc}")
    yield client
    for container in client.containers.list(
        all=True, filters={"label": f"agent-sandbox.owner={owner}"}
    ):
        container.remove(force=True)


def sandbox_starts_of(owner: str) -> Iterator[Callable[[], ContainerStarts]]:
    """watch() -> the containers labelled agent-sandbox.owner=`owner` the engine starts from then
    on, followed live until the test ends."""
    watching: list[ContainerStarts] = []

    def watch() -> ContainerStarts:
        watching.append(ContainerStarts(f"agent-sandbox.owner={owner}"))
        return watching[-1]

    yield watch
    for watcher in watching:
        watcher.close()
