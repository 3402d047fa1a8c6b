"""Lesson 12's client agent (code/lesson12/client_agent.py) as a stranger reaches it, in process:
its own agent is a stand-in (no research agent, no model), so what is checked is the door.

Before: no Host allow-list and no Origin check: `Host: attacker.example` was a 200, and a question
posted by a page on another site (`Origin: http://attacker.example`) streamed its events; and a
question left waiting for a decision waited for ever (its checkpoints kept in memory)."""

import json
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from support.lessons import import_lesson
from tests.support.errors import assert_error

QUESTION = {"question": "What does docker stop do?"}
ASKED = {"remote_task": "t1", "call_id": "c1", "tool": "run_python", "args": {"code": "1"}}


class StandIn:
    """Our agent's run without a model: it asks for a decision first, then answers."""

    def __init__(self):
        self.decided: set[str] = set()

    async def astream(self, inputs, config, stream_mode):
        if isinstance(inputs, dict) and inputs["messages"][0].content == "fail":
            raise RuntimeError("the remote agent is gone")
        if not isinstance(inputs, dict):  # a Command: the decision
            self.decided.add(config["configurable"]["thread_id"])
        yield {"note": "working"}

    async def aget_state(self, config):
        if config["configurable"]["thread_id"] in self.decided:
            return SimpleNamespace(interrupts=(), values={"messages": [SimpleNamespace(text="ok")]})
        return SimpleNamespace(interrupts=(SimpleNamespace(value=ASKED),), values={})


def client_agent(tmp_path, monkeypatch, **settings):
    token = tmp_path / "planner-token"
    token.write_text("not-a-real-token\n")
    monkeypatch.setenv("A2A_TOKEN_FILE", str(token))
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    module = import_lesson("lesson12.client_agent")
    module.agents["planner"] = StandIn()
    return module


@pytest.fixture
def agent(tmp_path, monkeypatch):
    return client_agent(tmp_path, monkeypatch)


def events(response) -> list[str]:
    return [line for line in response.text.splitlines() if line.startswith("event:")]


def test_a_host_not_ours_is_refused(agent):
    client = TestClient(agent.app, base_url="http://attacker.example")
    assert_error(client.get("/health"), 400, "untrusted_host")
    assert_error(client.post("/v1/questions", json=QUESTION), 400, "untrusted_host")


def test_a_page_elsewhere_is_refused(agent):
    client = TestClient(agent.app, base_url="http://127.0.0.1:8121")
    origin = {"Origin": "http://attacker.example"}
    assert_error(
        client.post("/v1/questions", json=QUESTION, headers=origin), 403, "origin_not_allowed"
    )
    decision = {"call_id": "c1", "decision": "approve"}
    refused = client.post("/v1/questions/abc/decision", json=decision, headers=origin)
    assert_error(refused, 403, "origin_not_allowed")


def test_our_own_host_is_served(agent):
    for base in ("http://127.0.0.1:8121", "http://localhost:8001"):
        client = TestClient(agent.app, base_url=base)
        assert client.get("/health").json() == {"status": "ok"}
        asked = client.post("/v1/questions", json=QUESTION)
        assert asked.status_code == 200
        assert "event: input-required" in events(asked)


def asked_id(response) -> str:
    data = [line for line in response.text.splitlines() if line.startswith("data:")][-1]
    return json.loads(data.removeprefix("data:"))["id"]


def test_a_question_waits_for_its_decision_within_the_time(agent):
    client = TestClient(agent.app, base_url="http://127.0.0.1:8121")
    thread = asked_id(client.post("/v1/questions", json=QUESTION))
    decided = client.post(
        f"/v1/questions/{thread}/decision", json={"call_id": "c1", "decision": "approve"}
    )
    assert decided.status_code == 200, decided.text
    assert '"answer":"ok"' in decided.text.replace(" ", "")


def test_a_question_left_waiting_expires(tmp_path, monkeypatch):
    agent = client_agent(tmp_path, monkeypatch, QUESTION_WAIT_SECONDS="0")
    client = TestClient(agent.app, base_url="http://127.0.0.1:8121")
    thread = asked_id(client.post("/v1/questions", json=QUESTION))
    late = client.post(
        f"/v1/questions/{thread}/decision", json={"call_id": "c1", "decision": "approve"}
    )
    assert_error(late, 409, "not_waiting")
    assert thread not in agent.agents["planner"].decided  # the run never went on


def test_a_question_whose_run_failed_is_forgotten(agent, monkeypatch):
    forgotten = []
    monkeypatch.setattr(agent.saver, "delete_thread", forgotten.append)
    client = TestClient(agent.app, base_url="http://127.0.0.1:8121", raise_server_exceptions=False)
    client.post("/v1/questions", json={"question": "fail"})
    assert len(forgotten) == 1 and not agent.deadlines
