"""The gateway with Redis away: /health answers, /ready and the routes say 503, no traceback."""

import sys

import httpx

from support.event_agents import GATEWAY
from support.lessons import run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from tests.support.errors import assert_error


def test_redis_away_is_a_503_in_the_error_shape(tmp_path):
    port, dead = free_port(), free_port()
    env = offline_environment(
        PORT=port, REDIS_URL=f"redis://127.0.0.1:{dead}/0", TOKEN_KEY="k" * 32
    )
    with ServerProcess(
        [sys.executable, *run_module(str(GATEWAY))],
        env=env,
        port=port,
        log_path=tmp_path / "gateway.log",
    ) as gateway:
        client = httpx.Client(base_url=gateway.url, timeout=15)
        assert client.get("/health").status_code == 200
        assert_error(client.get("/ready"), 503, "redis_unavailable")
        question, token = {"student_id": "ann", "text": "hi"}, {"Authorization": "Bearer t"}
        asked = client.post("/v1/questions", json=question, headers=token)
        error = assert_error(asked, 503, "redis_unavailable")
        assert "Traceback" not in error["message"]
        enrolled = client.post("/v1/students", json={"student_id": "ann"})
        assert_error(enrolled, 503, "redis_unavailable")
