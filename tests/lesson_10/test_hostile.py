"""Lesson 10's API against callers who are not playing fair, each case a defence that can fail:
someone else's decision (403), a replayed or unknown call (409), an edit that breaks the tool's
schema (422), a 5 MB decision (413), SQL in ids (parameters only), a flood of waiting runs (429),
two replicas deciding at once (one wins), the agent's database role reaching beyond its schema, a
page under a foreign Host (DNS rebinding: 400)."""

import threading

import psycopg
import pytest

from tests.lesson_10.conftest import start_run, state, wait_state
from tests.lesson_10.test_durable_api import decide
from tests.support.errors import assert_error


@pytest.fixture
def waiting(api):
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    return api, run_id, token, pending["call_id"]


def error_type(response) -> str:
    return response.json()["error"]["type"]


def test_only_the_owner_decides(waiting):
    api, run_id, token, call_id = waiting
    _, stranger = start_run(api, "hello")  # a valid token, of another run
    r = decide(api, run_id, stranger, call_id=call_id, decision="approve")
    assert (r.status_code, error_type(r)) == (403, "not_run_owner")
    with api.client() as c:
        r = c.post(f"/v1/runs/{run_id}/decisions", json={"call_id": call_id, "decision": "approve"})
    assert (r.status_code, error_type(r)) == (401, "owner_token_missing")
    with api.client(stranger) as c:
        assert c.get(f"/v1/runs/{run_id}").status_code == 403
        assert c.get(f"/v1/runs/{run_id}/events").status_code == 403
    assert state(api, run_id, token)["state"] == "waiting_for_approval"  # nothing decided


def test_a_replayed_or_unknown_call_is_a_conflict(waiting):
    api, run_id, token, call_id = waiting
    r = decide(api, run_id, token, call_id="call_999", decision="approve")
    assert (r.status_code, error_type(r)) == (409, "not_pending")
    assert decide(api, run_id, token, call_id=call_id, decision="reject").status_code == 202
    r = decide(api, run_id, token, call_id=call_id, decision="approve")  # the same call again
    assert (r.status_code, error_type(r)) == (409, "not_pending")
    assert "rejected" in wait_state(api, run_id, token, "done")["answer"]


@pytest.mark.parametrize(
    "args",
    [{"code": 5}, {"code": ["print(1)"]}, {"program": "print(1)"}, None],
    ids=["number", "list", "wrong-name", "missing"],
)
def test_an_edit_that_breaks_the_tool_schema_is_refused(waiting, args):
    api, run_id, token, call_id = waiting
    r = decide(api, run_id, token, call_id=call_id, decision="edit", args=args)
    assert (r.status_code, error_type(r)) == (422, "validation_error")
    assert "Traceback" not in r.text
    assert state(api, run_id, token)["state"] == "waiting_for_approval"  # still answerable


def test_a_5_mb_decision_is_refused_before_it_is_read(waiting):
    api, run_id, token, call_id = waiting
    r = decide(api, run_id, token, call_id=call_id, decision="edit", args={"code": "#" * 5_000_000})
    assert (r.status_code, error_type(r)) == (413, "payload_too_large")


def test_a_page_under_a_foreign_host_can_neither_start_nor_decide_a_run(waiting, agent_dsn):
    """DNS rebinding: a page on rebind.attacker.example, its name pointed at 127.0.0.1, is
    same-origin with the API for the browser. Before: it started runs (202) and decided them."""
    api, run_id, token, call_id = waiting
    foreign = {"Host": "rebind.attacker.example"}
    with api.client(token) as c:
        r = c.post("/v1/runs", json={"query": "What is 2**100?"}, headers=foreign)
        assert_error(r, 400, "untrusted_host")
        edit = {"call_id": call_id, "decision": "edit", "args": {"code": "print('mine')"}}
        assert_error(c.post(f"/v1/runs/{run_id}/decisions", json=edit, headers=foreign), 400,
                     "untrusted_host")  # fmt: skip
        assert_error(c.get("/approvals", headers=foreign), 400, "untrusted_host")
    assert state(api, run_id, token)["state"] == "waiting_for_approval"  # nothing decided
    with psycopg.connect(agent_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1  # nothing started


ATTACKS = ["x' OR '1'='1", "'; DROP TABLE runs; --", "0' UNION SELECT owner_hash FROM runs --"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_sql_in_ids_is_data(waiting, agent_dsn, attack):
    api, run_id, token, call_id = waiting
    r = decide(api, run_id, token, call_id=attack, decision="approve")
    assert (r.status_code, error_type(r)) == (409, "not_pending")
    with api.client(token) as c:
        assert c.get(f"/v1/runs/{attack}").status_code in (404, 422)
        created = c.post("/v1/runs", json={"query": attack})  # stored as written, run as a query
    assert created.status_code == 202
    # The thread id (run id) is what the checkpointer keys on: a hostile one finds nothing.
    with psycopg.connect(agent_dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM runs WHERE query = %s", (attack,)).fetchone()
        assert rows[0] == 1
        assert conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id = %s",
                            (attack,)).fetchone()[0] == 0  # fmt: skip
    assert state(api, run_id, token)["state"] == "waiting_for_approval"


def test_a_flood_of_waiting_runs_is_capped_per_owner(api_factory):
    api = api_factory("r1", MAX_ACTIVE_RUNS_PER_OWNER=3).start()
    _, token = start_run(api)
    for _ in range(2):
        start_run(api, token=token)
    with api.client(token) as c:
        r = c.post("/v1/runs", json={"query": "What is 1+1?"})
    assert (r.status_code, error_type(r)) == (429, "too_many_active_runs")
    assert int(r.headers["Retry-After"]) > 0


def test_two_replicas_deciding_at_once_one_wins(api_factory, agent_dsn):
    one = api_factory("r1").start()
    two = api_factory("r2").start()
    run_id, token = start_run(one)
    call_id = wait_state(two, run_id, token, "waiting_for_approval")["pending"]["call_id"]
    barrier, results = threading.Barrier(2), {}

    def send(api, decision):
        barrier.wait(30)
        results[api.name] = decide(api, run_id, token, call_id=call_id, decision=decision)

    threads = [threading.Thread(target=send, args=(api, "reject")) for api in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.status_code for r in results.values())
    assert codes == [202, 409], {k: r.text for k, r in results.items()}
    with psycopg.connect(agent_dsn) as conn:
        decisions = conn.execute("SELECT decision FROM decisions WHERE run_id = %s", (run_id,))
        assert len(decisions.fetchall()) == 1
    wait_state(one, run_id, token, "done")


def test_the_agent_role_stays_in_its_schema(agent_dsn, postgres_dsn):
    """Compose's role (code/lesson10/agent-role.sql): its own schema, nothing else."""
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA other; CREATE TABLE other.secrets (v text)")
        admin.execute("CREATE TABLE public.shared (v text)")
    with psycopg.connect(agent_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (v text)")  # its own schema: allowed
        for attack in [
            "SELECT * FROM other.secrets",
            "INSERT INTO other.secrets VALUES ('x')",
            "SELECT * FROM public.shared",
            "CREATE TABLE public.planted (v text)",
            "CREATE SCHEMA mine2",
            "CREATE ROLE intruder LOGIN PASSWORD 'x'",
            "ALTER ROLE CURRENT_USER SUPERUSER",
            "CREATE DATABASE another",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(attack)
