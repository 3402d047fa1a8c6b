"""Lesson 10's limits, each against the attack that broke it: event streams that never end or
that poll the database each (capped per owner and in total, woken by NOTIFY), a run cap one caller
could fill for everyone (now per owner, with a cancel), a Last-Event-ID that is not a number, and
an approvals page that another site could frame."""

import asyncio
import json

import httpx
import psycopg
import pytest
from psycopg import sql

from support.waiting import wait_for
from tests.lesson_10.conftest import events, start_run, state, wait_state
from tests.lesson_10.test_durable_api import decide
from tests.support.errors import assert_error


def stream_headers(token: str, last_id: str | bytes | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    if last_id is not None:
        headers["Last-Event-ID"] = last_id
    return headers


def finished_run(api) -> tuple[str, str, int]:
    """A run that has ended (rejected, then answered): its id, token and last event id."""
    run_id, token = start_run(api)
    call_id = wait_state(api, run_id, token, "waiting_for_approval")["pending"]["call_id"]
    assert decide(api, run_id, token, call_id=call_id, decision="reject").status_code == 202
    wait_state(api, run_id, token, "done")
    return run_id, token, events(api, run_id, token)[-1]["id"]


# Item 5: a Last-Event-ID that is not a number.


@pytest.mark.parametrize(
    "last_id",
    ["\u00b2".encode("latin-1"), "1" * 5000, "-1", "+1", "1e3", "0x10", "1" * 19],
    ids=["superscript-two", "5000-digits", "negative", "plus", "exponent", "hex", "19-digits"],
)
def test_a_last_event_id_that_is_not_a_number_is_a_400(api, last_id):
    run_id, token = start_run(api)
    with api.client() as c:
        r = c.get(f"/v1/runs/{run_id}/events", headers=stream_headers(token, last_id))
    error = assert_error(r, 400, "invalid_header")
    assert "Last-Event-ID" in error["message"]
    assert "Traceback" not in api.logs()


# Item 3: streams end, are bounded, and are woken by the database rather than polling it.


def test_the_stream_of_a_finished_run_ends_whatever_the_last_event_id(api):
    run_id, token, last = finished_run(api)
    with api.client() as c:
        past = c.get(f"/v1/runs/{run_id}/events", headers=stream_headers(token, "99999999"))
        assert_error(past, 400, "unknown_event_id")
        # Nothing after the last event of an ended run: 204, which stops EventSource retrying.
        at_end = c.get(f"/v1/runs/{run_id}/events", headers=stream_headers(token, str(last)))
        assert at_end.status_code == 204, at_end.text
    assert [e["type"] for e in events(api, run_id, token, last_id=last - 1)] == ["done"]


async def open_stream(client: httpx.AsyncClient, run_id: str, token: str):
    """Open one event stream; its response once the headers are in (the body is left open)."""
    request = client.build_request(
        "GET", f"/v1/runs/{run_id}/events", headers=stream_headers(token)
    )
    return await client.send(request, stream=True)


def log_statements(postgres_dsn: str, agent_dsn: str) -> None:
    """PostgreSQL logs every statement the API's role sends from its next connection on."""
    role = agent_dsn.split("//", 1)[1].split(":", 1)[0]
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER ROLE {} SET log_statement = 'all'").format(sql.Identifier(role))
        )


def event_queries(postgres_server, since: int = 0) -> tuple[int, int]:
    """(the server log's length now, the reads of the events table logged after `since`)."""
    log = postgres_server.log()
    return len(log), log[since:].count("FROM events WHERE run_id")


def test_streams_are_capped_per_owner_and_in_total_and_cost_the_database_nothing(
    api_factory, agent_dsn, postgres_dsn, postgres_server
):
    log_statements(postgres_dsn, agent_dsn)
    api = api_factory(MAX_STREAMS=60, MAX_STREAMS_PER_OWNER=20).start()
    owners = [start_run(api) for _ in range(4)]  # four owners, each with a run waiting
    for run_id, token in owners:
        wait_state(api, run_id, token, "waiting_for_approval")

    async def attack() -> dict:
        limits = httpx.Limits(max_connections=80)
        async with httpx.AsyncClient(base_url=api.url, timeout=30, limits=limits) as client:
            first, second, third, fourth = owners
            opened = await asyncio.gather(*(open_stream(client, *first) for _ in range(20)))
            over_owner = await open_stream(client, *first)
            await over_owner.aread()
            for owner in (second, third):
                opened += await asyncio.gather(*(open_stream(client, *owner) for _ in range(20)))
            over_total = await open_stream(client, *fourth)
            await over_total.aread()
            # 60 streams open, each waiting for its run: none of them reads the events table.
            await asyncio.sleep(0.5)  # their first reads are done
            mark, _ = await asyncio.to_thread(event_queries, postgres_server)
            await asyncio.sleep(3)
            ready = await client.get("/ready", timeout=5)  # HAProxy's check gives it about that
            _, reads = await asyncio.to_thread(event_queries, postgres_server, mark)
            answers = {
                "opened": [r.status_code for r in opened],
                "over_owner": over_owner,
                "over_total": over_total,
                "reads": reads,
                "ready": ready.status_code,
            }
            for r in opened:
                await r.aclose()
            return answers

    seen = asyncio.run(attack())
    assert seen["opened"] == [200] * 60
    assert_error(seen["over_owner"], 429, "too_many_streams")
    assert int(seen["over_owner"].headers["Retry-After"]) > 0
    assert_error(seen["over_total"], 429, "too_many_streams")
    assert seen["ready"] == 200
    # Polled ten times a second each, 60 streams read the events table 1,800 times in 3 s.
    assert seen["reads"] == 0, seen["reads"]
    # The slots are given back when the streams close.
    wait_for(lambda: stream_opens(api, *owners[0]) == 200, timeout=30, what="a free slot")


def stream_opens(api, run_id: str, token: str) -> int:
    with httpx.stream(
        "GET", f"{api.url}/v1/runs/{run_id}/events", headers=stream_headers(token), timeout=30
    ) as r:
        return r.status_code


def test_an_open_stream_is_woken_by_the_database_when_its_run_moves(api_factory):
    """The stream is opened while its run waits; a decision (sent to another replica) moves the run
    on, and the stream gets every event up to `done` and ends: only the NOTIFY of each event can
    wake it, with its keep-alive an hour away."""
    one = api_factory("r1", STREAM_KEEPALIVE_SECONDS=3600).start()
    two = api_factory("r2").start()
    run_id, token = start_run(one)
    call_id = wait_state(one, run_id, token, "waiting_for_approval")["pending"]["call_id"]
    seen: list[dict] = []

    async def follow():
        async with httpx.AsyncClient(base_url=one.url, timeout=120) as client:
            response = await open_stream(client, run_id, token)
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1]["type"] == "approval_required":
                        r = await asyncio.to_thread(
                            decide, two, run_id, token, call_id=call_id, decision="reject"
                        )
                        assert r.status_code == 202, r.text

    asyncio.run(asyncio.wait_for(follow(), 120))
    assert [e["type"] for e in seen][-4:] == ["decision", "tool_result", "answer", "done"]


# Item 4: the active-run cap is per owner, and an owner can cancel a run.


def test_one_owner_at_its_cap_does_not_block_another(api_factory):
    api = api_factory(MAX_ACTIVE_RUNS_PER_OWNER=2).start()
    _, token = start_run(api)
    start_run(api, token=token)
    with api.client(token) as c:
        r = c.post("/v1/runs", json={"query": "What is 1+1?"})
    assert_error(r, 429, "too_many_active_runs")
    # Another caller, from the same address (every caller behind Docker's port has one).
    run_id, other = start_run(api)
    assert other != token
    assert state(api, run_id, other)["state"] in ("running", "waiting_for_approval")


def test_the_total_of_active_runs_is_bounded(api_factory):
    api = api_factory(MAX_ACTIVE_RUNS=2).start()
    start_run(api)
    start_run(api)
    with api.client() as c:
        r = c.post("/v1/runs", json={"query": "What is 1+1?"})
    error = assert_error(r, 503, "too_many_active_runs_in_total")
    assert error["retryable"] is True and int(r.headers["Retry-After"]) > 0


def test_the_owner_cancels_a_waiting_run_and_a_stranger_cannot(api_factory):
    api = api_factory(MAX_ACTIVE_RUNS_PER_OWNER=1).start()
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    _, stranger = start_run(api)
    with api.client(stranger) as c:
        assert_error(c.delete(f"/v1/runs/{run_id}"), 403, "not_run_owner")
    with api.client() as c:
        assert_error(c.delete(f"/v1/runs/{run_id}"), 401, "owner_token_missing")
    assert state(api, run_id, token)["state"] == "waiting_for_approval"
    with api.client(token) as c:
        r = c.delete(f"/v1/runs/{run_id}")
        assert r.status_code == 200, r.text
        assert r.json() == {"run_id": run_id, "state": "cancelled"}
        assert_error(c.delete(f"/v1/runs/{run_id}"), 409, "run_ended")
    assert state(api, run_id, token)["state"] == "cancelled"
    assert [e["type"] for e in events(api, run_id, token)][-2:] == [
        "approval_required",
        "cancelled",
    ]
    r = decide(api, run_id, token, call_id=pending["call_id"], decision="approve")
    assert_error(r, 409, "not_pending")
    start_run(api, token=token)  # its slot is free again


def test_cancelling_a_running_run_stops_its_sandbox(api, engine):
    run_id, token = start_run(api)
    pending = wait_state(api, run_id, token, "waiting_for_approval")["pending"]
    slow = "import time\ntime.sleep(120)\nprint('never')"
    r = decide(api, run_id, token, call_id=pending["call_id"], decision="edit", args={"code": slow})
    assert r.status_code == 202, r.text
    label = {"label": f"agent-sandbox.request-id={run_id}"}
    wait_for(
        lambda: engine.containers.list(filters={**label, "status": "running"}),
        timeout=120,
        what="the run's sandbox running",
    )
    with api.client(token) as c:
        assert c.delete(f"/v1/runs/{run_id}").status_code == 200
    wait_for(
        lambda: engine.containers.list(all=True, filters=label, sparse=True) == [],
        timeout=60,
        what="the cancelled run's sandbox removed",
    )
    # The replica that worked on it lets go: the run stays cancelled and says nothing more.
    wait_for(lambda: f"run {run_id} let go" in api.logs(), timeout=60, what="the worker let go")
    assert state(api, run_id, token)["state"] == "cancelled"
    assert [e["type"] for e in events(api, run_id, token)][-1] == "cancelled"


# Item 6: the approvals page cannot be framed, and says so in every header browsers read.


def test_the_approvals_page_refuses_frames_sniffing_and_referrers(api):
    with api.client() as c:
        r = c.get("/approvals")
    assert r.status_code == 200
    policy = dict(
        (part.split(" ", 1) + [""])[:2]
        for part in (p.strip() for p in r.headers["Content-Security-Policy"].split(";"))
        if part
    )
    assert policy["frame-ancestors"] == "'none'"
    assert policy["default-src"] == "'none'"
    assert "'unsafe-inline'" not in r.headers["Content-Security-Policy"]
    assert policy["connect-src"] == "'self'"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
