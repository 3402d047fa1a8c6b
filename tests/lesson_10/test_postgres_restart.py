"""PostgreSQL killed (-9) and started again while a run is mid-step: the run pauses, the replica
says so in one line per retry (no traceback), and the run finishes once the database is back."""

import time

from support.waiting import wait_for
from tests.lesson_10.conftest import start_run, wait_state
from tests.lesson_10.test_crash import seen
from tests.lesson_10.test_durable_api import ANSWER, decide


def test_a_postgres_restart_mid_run(api_factory, postgres_server, agent_dsn, engine):
    api = api_factory("r1", OFFLINE_TOKEN_DELAY_MS=300).start()
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
