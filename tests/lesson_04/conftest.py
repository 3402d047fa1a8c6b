"""Fixtures for lesson 04: the lesson script imported with a chosen environment, the runtimes a
hostile suite runs under."""

import pytest

from support.lessons import import_lesson
from support.waiting import wait_for
from tests.support.sandbox_api import SandboxApi, containers


@pytest.fixture
def lesson(monkeypatch):
    """lesson(**env) imports the script as a fresh module (its Settings read the environment)."""

    def load(**env: str):
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "DOCKER_HOST"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("OFFLINE_TOKEN_DELAY_MS", "0")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return import_lesson("code/lesson04/sandboxed_tools.py")

    return load


@pytest.fixture(scope="module")
def engine():
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="module")
def api_forked() -> bool:
    """Whether the module's API is forked ready-imported; a suite that reads the API's
    /proc/PID/environ or its memory figures overrides this with False (an exec'ed API)."""
    return True


@pytest.fixture(scope="module")
def server(engine, api_settings, api_forked):
    """The lesson's API for a container suite, with the module's `api_settings`; nothing it created
    may remain once it is gone."""
    server = SandboxApi(fork=api_forked, **api_settings)
    yield server
    server.stop()
    wait_for(lambda: not containers(engine, server.owner), timeout=30, what="no container left")


# The hostile suites run under every runtime the daemon has: runc always, gVisor once `make gvisor`
# registered it (SANDBOX_RUNTIME=runsc).
RUNTIMES = ["runc", "runsc"]


@pytest.fixture(scope="module", params=RUNTIMES)
def runtime(request, engine) -> str:
    registered = sorted(engine.info().get("Runtimes", {}))
    if request.param not in registered:
        pytest.skip(
            f"the Docker daemon has no {request.param} runtime (it has {', '.join(registered)}); "
            "`make gvisor` registers gVisor's"
        )
    return request.param
