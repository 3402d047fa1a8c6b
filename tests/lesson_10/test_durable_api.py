"""Lesson 10's API on a real PostgreSQL: a run waits for a person, is decided, and answers."""

from research_agent.durable.idempotent import idempotency_key
from tests.lesson_10.conftest import events, start_run, state, wait_state

ANSWER = "1267650600228229401496703205376"


def decide(api, run_id, token, **body):
    with api.client(token) as c:
        return c.post(f"/v1/runs/{run_id}/decisions", json=body)


def test_a_run_waits_for_approval_then_answers(api, engine, sandbox_starts):
    starts = sandbox_starts()
    run_id, token = start_run(api)
    waiting = wait_state(api, run_id, token, "waiting_for_approval")
    pending = waiting["pending"]
    assert pending["tool"] == "run_python"
    assert pending["args"] == {"code": "print(2**100)"}
    r = decide(api, run_id, token, call_id=pending["call_id"], decision="approve")
    assert r.status_code == 202, r.text
    done = wait_state(api, run_id, token, "done")
    assert ANSWER in done["answer"]
    stream = events(api, run_id, token)
    assert [e["id"] for e in stream] == list(range(1, len(stream) + 1))  # no gap, no duplicate
    assert [e["type"] for e in stream] == [
        "run_started",
        "tool_call",
        "approval_required",
        "decision",
        "tool_result",
        "answer",
        "done",
    ]
    # Last-Event-ID resumes after the event named.
    assert [e["id"] for e in events(api, run_id, token, last_id=3)] == list(
        range(4, len(stream) + 1)
    )
    counted = starts.per("agent-sandbox.key")
    assert sorted(counted.values()) == [1], counted


def test_an_edited_call_runs_the_edit_and_its_output_is_read_back(api, engine):
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    r = decide(api, run_id, token, call_id=pending["call_id"], decision="edit",
               args={"code": "print(6 * 7)"})  # fmt: skip
    assert r.status_code == 202, r.text
    done = wait_state(api, run_id, token, "done")
    assert "The reviewed program printed 42" in done["answer"]


def test_a_rejected_call_never_runs_and_the_model_reads_why(api, engine, sandbox_starts):
    starts = sandbox_starts()
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    r = decide(api, run_id, token, call_id=pending["call_id"], decision="reject",
               message="not today")  # fmt: skip
    assert r.status_code == 202, r.text
    done = wait_state(api, run_id, token, "done")
    assert "not today" in done["answer"]
    assert starts.per("agent-sandbox.key") == {}
    assert state(api, run_id, token)["pending"] is None


def test_a_call_nobody_decides_on_ends_the_run_as_expired(api_factory, sandbox_starts):
    """APPROVAL_TIMEOUT_SECONDS: a run waits that long for a person, then ends with an event that
    says why; its call never runs, and a decision that comes later is a conflict."""
    starts = sandbox_starts()
    api = api_factory(APPROVAL_TIMEOUT_SECONDS=2).start()
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    ended = wait_state(api, run_id, token, "expired", timeout=60)
    assert ended["pending"] is None and not ended.get("answer")
    stream = events(api, run_id, token)
    assert [e["type"] for e in stream][-2:] == ["approval_required", "approval_expired"]
    assert "no decision within 2 s" in stream[-1]["message"]
    r = decide(api, run_id, token, call_id=pending["call_id"], decision="approve")
    assert r.status_code == 409, r.text
    # This run's call never started a sandbox (another test's run on this engine may have).
    assert f"agent-sandbox-{idempotency_key(run_id, pending['call_id'])}" not in starts.per(
        "agent-sandbox.key"
    )
