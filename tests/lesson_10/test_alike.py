"""The lesson's last step and the production app answer alike.

`code/lesson10/step5_lease.py` (where docs/10's steps arrive) and `code/lesson10/durable_runs.py`
with the research agent's durable layer (what `make lesson-10` runs) are each started as a process
on its own database of one real PostgreSQL, offline, and given the doc's question. For each decision
the doc teaches (approve; edit, as sections 4 and 5 do; reject with a reason), both must stop at the
same call, take the decision the same way, refuse a second one the same way, and end with the same
answer. Either side changed to answer differently fails this test."""

import sys

import httpx
import pytest

from support.lessons import ROOT
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for
from tests.lesson_10.conftest import OWNER, SANDBOX_IMAGE

QUESTION = "What is 2**100?"  # docs/10's question
DECISIONS = {
    "approve": {"decision": "approve"},
    "edit": {"decision": "edit", "args": {"code": "print(6 * 7)"}},
    "reject": {"decision": "reject", "message": "not today"},
}


class Side:
    def __init__(self, url: str):
        self.client = httpx.Client(base_url=url, timeout=30)

    def start(self) -> tuple[str, dict]:
        r = self.client.post("/v1/runs", json={"query": QUESTION})
        assert r.status_code == 202, r.text
        return r.json()["run_id"], {"Authorization": f"Bearer {r.json()['owner_token']}"}

    def state(self, run_id: str, auth: dict, wanted: str) -> dict:
        def reached():
            body = self.client.get(f"/v1/runs/{run_id}", headers=auth).json()
            assert body["state"] in ("running", wanted), body
            return body if body["state"] == wanted else None

        return wait_for(reached, timeout=90, interval=0.2, what=f"{run_id} {wanted}")

    def decide(self, run_id: str, auth: dict, body: dict) -> httpx.Response:
        return self.client.post(f"/v1/runs/{run_id}/decisions", json=body, headers=auth)

    def flow(self, decision: dict) -> dict:
        """The doc's question, one decision: what a client sees at each step."""
        run_id, auth = self.start()
        pending = self.state(run_id, auth, "waiting_for_approval")["pending"]
        body = {"call_id": pending["call_id"], **decision}
        taken = self.decide(run_id, auth, body)
        again = self.decide(run_id, auth, body)
        done = self.state(run_id, auth, "done")
        stranger = self.client.get(f"/v1/runs/{run_id}", headers={"Authorization": "Bearer x"})
        taken_body = {**taken.json(), "run_id": taken.json()["run_id"] == run_id}
        return {
            "pending": pending,
            "decision": (taken.status_code, taken_body),
            "the same decision again": again.status_code,
            "answer": done["answer"],
            "pending once done": done["pending"],
            "another token": stranger.status_code,
        }


@pytest.fixture
def step_5(postgres_server, tmp_path):
    """The last step, as `make lesson-10 STEP=5` runs it, on a database of its own."""
    dsn = postgres_server.create_database()
    port = free_port()
    env = offline_environment(
        DATABASE_URL=dsn, HOST="127.0.0.1", PORT=port, SANDBOX_IMAGE=SANDBOX_IMAGE,
        SANDBOX_OWNER=OWNER,
    )  # fmt: skip
    server = ServerProcess(
        [sys.executable, "-m", "lesson10.step5_lease"], cwd=ROOT, env=env, port=port,
        ready_path="/openapi.json", ready_timeout=60, log_path=tmp_path / "step5.log",
    ).start()  # fmt: skip
    yield Side(server.url)
    server.stop()
    postgres_server.drop_database(dsn.rsplit("/", 1)[1])


@pytest.mark.parametrize("kind", DECISIONS)
def test_the_last_step_and_the_production_app_answer_alike(kind, step_5, api, engine):
    production = Side(api.url)
    step, app = step_5.flow(DECISIONS[kind]), production.flow(DECISIONS[kind])
    assert step == app
    # And they answer the question, not merely the same thing.
    expected = {
        "approve": "[offline model] 2**100 = 1267650600228229401496703205376 (run in the sandbox)",
        "edit": "[offline model] The reviewed program printed 42",
        "reject": "not today",
    }[kind]
    assert expected in app["answer"]
    call = {"call_id": "call_2", "tool": "run_python", "args": {"code": "print(2**100)"}}
    assert app["pending"] == call
