"""Lesson 05 with real containers (`make variations-test`, marker `container`).

Redis and the network come from scripts/lesson-05.sh, the API runs as its own process, every
variation is a container of the research-agent image. Each test checks what the Docker engine saw.
"""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from httpx_sse import connect_sse

from support.waiting import wait_for
from tests.support.docker_cli import docker
from tests.support.variations import HOSTILE, auth, by_variation, cancel, read_events, start_run

pytestmark = pytest.mark.container
IMAGE = os.environ.get("WORKER_IMAGE", "research-agent:lesson-05")


def containers_of(run_id: str) -> list[str]:
    return docker("ps", "-aq", "--filter", f"label=ai-course.run={run_id}").split()


def token_from(variation: int):
    return lambda events: any(n == "token" and d["variation"] == variation for _, n, d in events)


def test_variations_run_in_limited_labelled_containers_and_leave_none(api_process, stack):
    # Slow tokens keep each container alive for many seconds, so all three can be seen even when a
    # loaded machine starts them far apart.
    api = api_process(OFFLINE_TOKEN_DELAY_MS=80)
    run_id = start_run(api.url, query=HOSTILE, variations=3)["run_id"]
    # Each container inspected as soon as it is seen; one listed and removed before its inspect
    # answers (`[]`) is simply not counted.
    inspected: dict[str, dict] = {}

    def three_inspected() -> bool:
        for cid in set(containers_of(run_id)) - set(inspected):
            found = json.loads(docker("inspect", cid, check=False) or "[]")
            if found:
                inspected[cid] = found[0]
        return len(inspected) == 3

    wait_for(three_inspected, timeout=60, what="three containers, each inspected")
    for c in inspected.values():
        host, config = c["HostConfig"], c["Config"]
        assert host["Memory"] == 512 * 2**20 and host["MemorySwap"] == 512 * 2**20
        assert host["NanoCpus"] == 10**9 and host["PidsLimit"] == 128
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["ExtraHosts"] == ["host.docker.internal:host-gateway"]  # a model on the host
        assert host["NetworkMode"] == stack["WORKER_NETWORK"]
        assert (
            config["Cmd"] == ["python", "-m", "research_agent.worker"]
            and config["User"] == "10001:10001"
        )
        assert config["Labels"]["ai-course.run"] == run_id
        assert config["Labels"]["ai-course.deployment"] == stack["DEPLOYMENT"]
        assert f"QUERY={HOSTILE.strip()}" in config["Env"]  # data, exactly as typed
    events = read_events(api.url, run_id, timeout=120)
    done, finals = by_variation(events, "variation_done"), by_variation(events, "final")
    assert [done[i]["status"] for i in range(3)] == ["succeeded"] * 3
    assert len({finals[i]["response"] for i in range(3)}) == 3
    assert all(finals[i]["query"] == HOSTILE.strip() for i in range(3))
    stats = by_variation(events, "worker_stats")
    assert all(0 < stats[i]["cgroup_peak_mb"] < 512 for i in range(3))
    wait_for(lambda: not containers_of(run_id), timeout=30, what="the containers to be removed")


def worker_container(run_id: str, variation: int) -> str:
    labels = [f"label=ai-course.run={run_id}", f"label=ai-course.variation={variation}"]
    return docker("ps", "-q", "--filter", labels[0], "--filter", labels[1])


def test_a_killed_container_fails_its_variation_and_the_others_finish(api_process):
    api = api_process(OFFLINE_TOKEN_DELAY_MS=80)
    run_id = start_run(api.url, variations=2)["run_id"]
    read_events(api.url, run_id, until=token_from(0), timeout=120)
    victim = worker_container(run_id, 0)
    docker("kill", victim)
    events = read_events(api.url, run_id, timeout=120)
    done = by_variation(events, "variation_done")
    assert done[0]["status"] == "failed" and done[0]["exit_code"] == 137
    assert done[0]["oom_killed"] is False and "SIGKILL" in done[0]["reason"]
    assert done[1]["status"] == "succeeded" and 1 in by_variation(events, "final")
    wait_for(lambda: not containers_of(run_id), timeout=30, what="the containers to be removed")


# Run inside a worker's container: marks the worker (PID 1, same user) as the kernel's first choice,
# then allocates past the container's memory limit. The cgroup's OOM killer then kills the worker.
HOG = """
open("/proc/1/oom_score_adj", "w").write("1000")
hog = [bytearray(16 * 2**20) for _ in range(64)]
"""


def test_an_oom_killed_variation_fails_and_the_others_finish(api_process):
    api = api_process(OFFLINE_TOKEN_DELAY_MS=80)
    run_id = start_run(api.url, variations=2)["run_id"]
    read_events(api.url, run_id, until=token_from(0), timeout=120)
    victim = worker_container(run_id, 0)
    docker("exec", victim, "python", "-c", HOG, check=False)
    events = read_events(api.url, run_id, timeout=120)
    done = by_variation(events, "variation_done")
    assert done[0]["status"] == "failed" and done[0]["oom_killed"] is True
    assert done[0]["exit_code"] == 137
    assert done[0]["reason"] == "out of memory: killed at the 512m limit"
    assert done[1]["status"] == "succeeded"
    view = httpx.get(f"{api.url}/v1/runs/{run_id}", headers=auth(run_id)).json()
    assert [v["status"] for v in view["variations"]] == ["failed", "succeeded"]


def test_cancel_removes_every_container_before_it_answers(api_process):
    api = api_process(OFFLINE_TOKEN_DELAY_MS=200)
    run_id = start_run(api.url, variations=3)["run_id"]
    wait_for(lambda: len(containers_of(run_id)) == 3, timeout=60, what="three containers")
    cancel(api.url, run_id, timeout=120)
    assert containers_of(run_id) == []
    events = read_events(api.url, run_id)
    assert events[-1][1] == "run_done" and events[-1][2]["status"] == "cancelled"


def delete_twice_at_once(url: str, run_id: str) -> list[httpx.Response]:
    def delete(_) -> httpx.Response:
        return httpx.delete(f"{url}/v1/runs/{run_id}", headers=auth(run_id), timeout=120)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(delete, range(2)))


def test_two_deletes_at_once_both_answer_without_a_503(api_process):
    """Both requests remove the same containers; the engine answers the second one 409 (removal
    already in progress), which means the container is on its way out, not that Docker is down."""
    api = api_process(OFFLINE_TOKEN_DELAY_MS=200)
    for _ in range(3):  # the two removals must overlap: three runs make a miss unlikely
        run_id = start_run(api.url, variations=3)["run_id"]
        wait_for(lambda: len(containers_of(run_id)) == 3, timeout=60, what="three containers")  # noqa: B023
        answers = delete_twice_at_once(api.url, run_id)
        statuses = sorted(a.status_code for a in answers)
        assert statuses in ([200, 200], [200, 409]), [a.text for a in answers]
        assert containers_of(run_id) == []


class Listener(threading.Thread):
    """An SSE client that keeps what it receives until its connection ends, whatever ends it."""

    def __init__(self, url: str, run_id: str):
        super().__init__(daemon=True)
        self.url, self.run_id, self.events, self.error = url, run_id, [], None
        self.start()

    def run(self):
        try:
            with (
                httpx.Client(base_url=self.url, timeout=120, headers=auth(self.run_id)) as client,
                connect_sse(client, "GET", f"/v1/runs/{self.run_id}/events") as source,
            ):
                for sse in source.iter_sse():
                    if sse.id and sse.data:
                        self.events.append((sse.id, sse.event, json.loads(sse.data)))
        except httpx.HTTPError as exc:  # the server went away mid-stream
            self.error = exc


def test_the_api_restarts_mid_run_and_its_clients_resume(api_process, stack):
    # 300 ms a token: no variation ends within the stop's 5 s, in which open event streams are
    # given time to end and the reaper still removes a finished variation's container.
    first = api_process(OFFLINE_TOKEN_DELAY_MS=300)
    run_id = start_run(first.url, variations=2)["run_id"]
    listener = Listener(first.url, run_id)
    # A token from each variation: both containers exist (on a busy machine the second create can
    # still be in flight when the first variation speaks, and a stop then leaves one container).
    both = lambda events: token_from(0)(events) and token_from(1)(events)  # noqa: E731
    wait_for(lambda: both(listener.events), timeout=90, what="a token from each variation")
    assert first.stop() in (0, -15)  # SIGTERM: uvicorn ends the open stream and exits
    listener.join(30)
    assert not listener.is_alive() and listener.events[-1][1] != "run_done"
    assert len(containers_of(run_id)) == 2  # the workers did not notice
    # A container the new API has no run for: swept at start-up, like any leftover.
    leftover = docker(
        "run", "-d", "--label", "ai-course.role=variation-worker",
        "--label", f"ai-course.deployment={stack['DEPLOYMENT']}",
        "--label", "ai-course.run=0000000000000000", "--label", "ai-course.variation=0",
        "--network", stack["WORKER_NETWORK"], IMAGE, "python", "-c", "import time; time.sleep(120)",
    )  # fmt: skip
    second = api_process(OFFLINE_TOKEN_DELAY_MS=80)
    assert docker("ps", "-aq", "--filter", f"id={leftover}") == ""
    # The client reconnects with the last id it saw, as EventSource does.
    after = read_events(second.url, run_id, last_id=listener.events[-1][0], timeout=120)
    assert listener.events + after == read_events(second.url, run_id)  # none lost, none twice
    done = by_variation(after, "variation_done")
    assert {done[0]["status"], done[1]["status"]} == {"succeeded"}
    wait_for(lambda: not containers_of(run_id), timeout=30, what="the containers to be removed")
