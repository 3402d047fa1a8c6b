"""DNS rebinding against lesson 04's production API: a page on rebind.attacker.example, whose name
the attacker then points at 127.0.0.1, posts code to the API on the learner's loopback. The browser
sends the page's name in Host.

Before: the API ran the code (200) whatever the Host. The first cases need no Docker; the container
case counts the sandboxes the engine starts (`make sandbox-test`).
"""

import json
import uuid

import pytest
from fastapi.testclient import TestClient

from support.waiting import wait_for
from tests.support.docker_cli import ContainerStarts
from tests.support.errors import assert_error
from tests.support.sandbox_api import SandboxApi, containers

NO_DOCKER = "unix:///nonexistent/docker.sock"
FOREIGN = "rebind.attacker.example"
CODE = {"code": "print(2**100)"}


def post(api: SandboxApi, host: str, **headers: str):
    return api.http.post("/v1/tools/python", json=CODE, headers={"Host": host, **headers})


def test_a_foreign_host_is_refused_in_the_error_shape_and_the_lessons_names_are_served():
    api = SandboxApi(DOCKER_HOST=NO_DOCKER)
    try:
        port = api.port
        for host in (FOREIGN, f"{FOREIGN}:{port}", f"127.0.0.1.{FOREIGN}", "localhost.", ""):
            error = assert_error(post(api, host), 400, "untrusted_host")
            assert "host" in error["message"]
        assert_error(api.http.get("/health", headers={"Host": FOREIGN}), 400, "untrusted_host")
        # The names the doc's commands send reach the route: with no Docker, its 503.
        for host in ("127.0.0.1", f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
            assert_error(post(api, host), 503, "sandbox_unavailable")
    finally:
        api.stop()


def test_allowed_hosts_names_the_hosts_it_answers_an_ipv6_address_in_brackets(lesson):
    module = lesson(DOCKER_HOST=NO_DOCKER, ALLOWED_HOSTS=json.dumps(["agent.internal", "[::1]"]))
    with TestClient(module.app, raise_server_exceptions=False) as client:
        for host in ("agent.internal", "agent.internal:8000", "[::1]:8000", "[::1]"):
            response = client.post("/v1/tools/python", json=CODE, headers={"Host": host})
            assert_error(response, 503, "sandbox_unavailable")
        for host in (
            "localhost",
            "127.0.0.1:8000",
            "[::2]",
            "evil.agent.internal",
            "agent.internal.x",
        ):
            response = client.post("/v1/tools/python", json=CODE, headers={"Host": host})
            assert_error(response, 400, "untrusted_host")


@pytest.mark.container
def test_code_posted_under_a_foreign_host_starts_no_sandbox(engine):
    api = SandboxApi()
    try:
        starts = ContainerStarts(f"agent-sandbox.owner={api.owner}")
        refused, served = uuid.uuid4().hex, uuid.uuid4().hex
        assert_error(post(api, FOREIGN, **{"X-Request-ID": refused}), 400, "untrusted_host")
        answer = post(api, f"localhost:{api.port}", **{"X-Request-ID": served})
        assert answer.status_code == 200 and answer.json()["stdout"].strip() == str(2**100)
        assert starts.per("agent-sandbox.request-id") == {served: 1}
    finally:
        api.stop()
    wait_for(lambda: not containers(engine, api.owner), timeout=30, what="no container left")
