"""kill -9 at the three moments of a run (docs/10, "Crash and continue"): while it waits for a
person, during a model call, while run_python runs. Another process continues it from PostgreSQL;
the answer is the same, each approved call started exactly one container (the engine's own event
log says so), and the event stream has every number once."""

import uuid

import psycopg

from support.waiting import wait_for
from tests.lesson_10.conftest import OWNER, SANDBOX_IMAGE, events, start_run, wait_state
from tests.lesson_10.test_durable_api import ANSWER, decide


def event_types(api, run_id, token) -> list[str]:
    stream = events(api, run_id, token)
    assert [e["id"] for e in stream] == list(range(1, len(stream) + 1)), stream
    return [e["type"] for e in stream]


def seen(dsn: str, run_id: str, wanted: str) -> bool:
    """The run's event log (its table, read directly) has an event of that type."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT 1 FROM events WHERE run_id = %s AND type = %s", (run_id, wanted)
        ).fetchone()
    return row is not None


EXPECTED = ["run_started", "tool_call", "approval_required", "decision", "tool_result", "answer",
            "done"]  # fmt: skip


def test_killed_while_waiting_for_approval(api_factory, engine, sandbox_starts):
    starts = sandbox_starts()
    first = api_factory("r1").start()
    run_id, token = start_run(first)
    pending = wait_state(first, run_id, token, "waiting_for_approval")["pending"]
    first.kill9()
    second = api_factory("r2").start()  # another process: only the database remembers the run
    assert wait_state(second, run_id, token, "waiting_for_approval")["pending"] == pending
    assert decide(second, run_id, token, call_id=pending["call_id"], decision="approve").is_success
    assert ANSWER in wait_state(second, run_id, token, "done")["answer"]
    assert event_types(second, run_id, token) == EXPECTED
    assert sorted(starts.per("agent-sandbox.key").values()) == [1]


def test_killed_during_a_model_call(api_factory, engine, agent_dsn, sandbox_starts):
    starts = sandbox_starts()
    # 400 ms a token: the answer's model call takes seconds, long enough to be killed in.
    first = api_factory("r1", OFFLINE_TOKEN_DELAY_MS=400).start()
    run_id, token = start_run(first)
    pending = wait_state(first, run_id, token, "waiting_for_approval")["pending"]
    assert decide(first, run_id, token, call_id=pending["call_id"], decision="approve").is_success
    wait_for(lambda: seen(agent_dsn, run_id, "tool_result"), timeout=60, what="tool result")
    assert not seen(agent_dsn, run_id, "answer")  # the model is writing it
    first.kill9()
    second = api_factory("r2").start()  # takes the run once r1's lease expires
    assert ANSWER in wait_state(second, run_id, token, "done")["answer"]
    assert event_types(second, run_id, token) == EXPECTED
    assert sorted(starts.per("agent-sandbox.key").values()) == [1]


def test_killed_while_run_python_runs(api_factory, engine, sandbox_starts):
    starts = sandbox_starts()
    first = api_factory("r1").start()
    run_id, token = start_run(first)
    pending = wait_state(first, run_id, token, "waiting_for_approval")["pending"]
    slow = "import time\ntime.sleep(4)\nprint(2**100)"
    r = decide(first, run_id, token, call_id=pending["call_id"], decision="edit",
               args={"code": slow})  # fmt: skip
    assert r.is_success, r.text

    def sandbox_running():
        filters = {"label": [f"agent-sandbox.request-id={run_id}"], "status": "running"}
        return engine.containers.list(filters=filters)

    wait_for(sandbox_running, timeout=60, what="the run's sandbox container running")
    first.kill9()  # the program is sleeping in its container; nobody reads its output now
    second = api_factory("r2").start()
    done = wait_state(second, run_id, token, "done")
    assert f"printed {ANSWER}" in done["answer"]  # read from the container the first one started
    assert event_types(second, run_id, token) == EXPECTED
    assert sorted(starts.per("agent-sandbox.key").values()) == [1]
    leftovers = engine.containers.list(  # sparse: one being removed is not inspected
        all=True, filters={"label": f"agent-sandbox.request-id={run_id}"}, sparse=True
    )
    assert leftovers == []  # removed once its result was recorded


def test_a_container_created_but_never_started_is_made_again_and_runs_once(engine, sandbox_starts):
    """A process that died between creating a call's container (and perhaps sending it part of
    the program) and starting it left it `created`: nothing ran. The next one to take the call
    removes it and runs the program in a new container, once; had it started the old one, the
    container would have run what the dead process half sent, or nothing."""
    from research_agent.durable.idempotent import KeyedSandbox
    from research_agent.sandbox.runner import SandboxRunner
    from research_agent.settings import SandboxConfig

    starts = sandbox_starts()
    sandbox = KeyedSandbox(SandboxRunner(SandboxConfig(image=SANDBOX_IMAGE, owner=OWNER)))
    key, run_id = uuid.uuid4().hex, uuid.uuid4().hex
    uid = sandbox.runner.take_uid()
    left = sandbox.runner.create_from(sandbox.kept(f"agent-sandbox-{key}", 10, run_id, uid))
    sock = left.attach_socket(params={"stdin": 1, "stream": 1})
    raw = sock._sock
    raw.sendall(b"10\nprint('half sent")  # and then the process died
    sock.close()
    raw.close()
    result = sandbox.run(key, "print(2**100)", run_id)
    assert (result.stdout, result.exit_code) == (f"{ANSWER}\n", 0), result
    assert sorted(starts.per("agent-sandbox.key").values()) == [1]
