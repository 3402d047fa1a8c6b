"""Lesson 04's per-client share against a client that names a new address in each request.

Before: uvicorn believed X-Forwarded-For from 127.0.0.1 (its default), so ten concurrent runs from
one client, each with a new header, all got 200 instead of 2; one client rotating it took every slot
and queue place, and the access log recorded the made-up addresses. The process-level case needs
no Docker; the container case runs real sandboxes (`make sandbox-test`).
"""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support.waiting import wait_for
from tests.support.sandbox_api import SandboxApi, containers

NO_DOCKER = "unix:///nonexistent/docker.sock"
MADE_UP = "203.0.113.9"  # TEST-NET-3: an address reserved for documentation


@pytest.mark.parametrize(
    "proxy, logged",
    [
        pytest.param({}, "127.0.0.1", id="made-up-x-forwarded-for-is-not-believed"),
        pytest.param({"FORWARDED_ALLOW_IPS": "127.0.0.1"}, MADE_UP, id="a-trusted-proxy-is"),
    ],
)
def test_the_access_log_names_the_real_client_unless_a_trusted_proxy_says(proxy, logged):
    api = SandboxApi(DOCKER_HOST=NO_DOCKER, **proxy)
    try:
        response = api.http.get("/health?forwarded", headers={"X-Forwarded-For": MADE_UP})
        assert response.status_code == 200
        api.stop()
        access = [line for line in api.logs().splitlines() if "GET /health?forwarded" in line]
        assert len(access) == 1 and f" {logged}:" in access[0], access
    finally:
        api.stop()


@pytest.mark.container
def test_a_new_x_forwarded_for_per_request_buys_no_extra_share(engine):
    # Defaults: two runs per client. Six at once from one client, each naming another address.
    api = SandboxApi()
    try:

        def post(i: int) -> httpx.Response:
            return api.http.post(
                "/v1/tools/python",
                json={"code": "import time; time.sleep(3)"},
                headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
            )

        with ThreadPoolExecutor(6) as pool:
            statuses = sorted(answer.status_code for answer in pool.map(post, range(6)))
        assert statuses == [200, 200, 429, 429, 429, 429], statuses
    finally:
        api.stop()
    wait_for(lambda: not containers(engine, api.owner), timeout=30, what="no container left")
