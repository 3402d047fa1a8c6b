"""Lesson 05's API as its clients use it: start a run, read its events with the owner token."""

import json

import httpx
from httpx_sse import connect_sse

# A query with every kind of quoting and markup a shell or a page could trip over.
HOSTILE = (
    "How do I stop a container gracefully? `id` $(touch /tmp/pwned) \"; rm -rf / # 'quotes' \\"
    "\nand newlines <b>bold</b>"
)
# The owner token of every run this process created, so that the helpers can show it.
TOKENS: dict[str, str] = {}


def auth(run_id: str) -> dict[str, str]:
    """The header that shows a run's owner token (none for a run this process did not create)."""
    return {"Authorization": f"Bearer {TOKENS[run_id]}"} if run_id in TOKENS else {}


def start_run(url: str, **body) -> dict:
    body = {"query": "How do I stop a container gracefully?", "variations": 2, **body}
    response = httpx.post(f"{url}/v1/runs", json=body, timeout=30)
    assert response.status_code == 202, response.text
    created = response.json()
    TOKENS[created["run_id"]] = created["owner_token"]
    return created


def cancel(url: str, run_id: str, timeout: float = 60) -> dict:
    """DELETE the run as its owner; it must answer that the run is cancelled."""
    response = httpx.delete(f"{url}/v1/runs/{run_id}", headers=auth(run_id), timeout=timeout)
    assert response.status_code == 200 and response.json()["status"] == "cancelled", response.text
    return response.json()


def read_events(
    url: str,
    run_id: str,
    last_id: str | None = None,
    stop_after: int | None = None,
    timeout: float = 60,
    until=None,
):
    """[(id, event, data)] from /v1/runs/{id}/events until run_done, `stop_after` events, or
    `until(events so far)` is true; the connection is then closed."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    headers.update(auth(run_id))
    found = []
    with (
        httpx.Client(base_url=url, timeout=timeout) as client,
        connect_sse(client, "GET", f"/v1/runs/{run_id}/events", headers=headers) as source,
    ):
        if not source.response.headers.get("content-type", "").startswith("text/event-stream"):
            source.response.read()  # not a stream: say what came instead
            raise AssertionError(f"{source.response.status_code}: {source.response.text[:300]}")
        for sse in source.iter_sse():
            if not sse.data:  # the `retry:` line, keep-alive pings
                continue
            found.append((sse.id, sse.event, json.loads(sse.data)))
            if sse.event == "run_done" or (stop_after and len(found) >= stop_after):
                break
            if until and until(found):
                break
    return found


def by_variation(events, name):
    return {data["variation"]: data for _, event, data in events if event == name}
