"""PostgreSQL killed (-9) and started again while a run is mid-step: the run pauses, the replica
says so in one line per retry (no traceback), and the run finishes once the database is back; its
event streams' listener is back too."""

import json
import time

import httpx

from support.waiting import wait_for
from tests.lesson_10.conftest import start_run, wait_state
from tests.lesson_10.test_crash import seen
from tests.lesson_10.test_durable_api import ANSWER, decide


def test_a_postgres_restart_mid_run(api_factory, postgres_server, agent_dsn, engine):
    # Streams are woken by NOTIFY alone here: their keep-alive (and re-read) is an hour away.
    api = api_factory("r1", OFFLINE_TOKEN_DELAY_MS=300, STREAM_KEEPALIVE_SECONDS=3600).start()
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    assert decide(api, run_id, token, call_id=pending["call_id"], decision="approve").is_success
    wait_for(lambda: seen(agent_dsn, run_id, "tool_result"), timeout=60, what="the tool's result")
    postgres_server.kill()  # mid-answer: the model's next checkpoint has nowhere to go
    time.sleep(4)  # an outage of a few polls and lease periods
    with api.client(token) as c:
        r = c.get(f"/v1/runs/{run_id}")
    assert (r.status_code, r.json()["error"]["type"]) == (503, "database_unavailable")
    assert r.headers["Retry-After"]
    postgres_server.start()
    done = wait_state(api, run_id, token, "done", timeout=120, recovering=True)
    assert ANSWER in done["answer"]
    log = api.logs()
    assert "Traceback" not in log
    retries = log.count("database unavailable (try")
    assert 1 <= retries <= 30, log[-3000:]

    # The listener reconnected: a stream opened now hears the events of a decision.
    wait_for(lambda: "listening for run events again" in api.logs(), timeout=60,
             what="the stream listener back")  # fmt: skip
    second, token = start_run(api)
    pending = wait_state(api, second, token, "waiting_for_approval")["pending"]
    so_far = events_until(api, second, token, "approval_required")
    headers = {"Authorization": f"Bearer {token}", "Last-Event-ID": str(len(so_far))}
    with httpx.stream("GET", f"{api.url}/v1/runs/{second}/events", headers=headers,
                      timeout=120) as stream:  # fmt: skip
        assert stream.status_code == 200
        assert decide(api, second, token, call_id=pending["call_id"], decision="reject").is_success
        types = [json.loads(line[6:])["type"] for line in stream.iter_lines()
                 if line.startswith("data: ")]  # fmt: skip
    assert types == ["decision", "tool_result", "answer", "done"], (so_far, types)


def events_until(api, run_id: str, token: str, last_type: str) -> list[dict]:
    """The run's events so far, which end with `last_type`."""
    seen_so_far = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", f"{api.url}/v1/runs/{run_id}/events", headers=headers,
                      timeout=30) as stream:  # fmt: skip
        for line in stream.iter_lines():
            if line.startswith("data: "):
                seen_so_far.append(json.loads(line[6:]))
                if seen_so_far[-1]["type"] == last_type:
                    return seen_so_far
    raise AssertionError(seen_so_far)
