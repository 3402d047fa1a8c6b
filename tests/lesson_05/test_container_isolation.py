"""Lesson 05 attacked from inside a real worker container and from the host, and its Redis
restarted under a run (`make variations-test`, marker `container`).

Redis and the network come from scripts/lesson-05.sh, the API runs as its own process (as in
test_containers.py).
"""

import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from support.waiting import wait_for
from tests.support.docker_cli import docker
from tests.support.redis import one_try
from tests.support.variations import by_variation, read_events, start_run

pytestmark = pytest.mark.container

# Run inside a worker's container with its own environment: what a hostile worker would try.
ATTACK = """
import json, os, redis
me = redis.Redis.from_url(os.environ["REDIS_URL"])
other, mine = os.environ["OTHER"], os.environ["RUN_ID"]
tries = {
    "read another run": lambda: me.hgetall("run:" + other),
    "rewrite its owner": lambda: me.hset("run:" + other, "owner", "attacker"),
    "forge variation 0": lambda: me.hset(f"run:{mine}:v:0", "result", "{}"),
    "write the run's stream": lambda: me.xadd(f"run:{mine}:events", {"event": "run_done"}),
    "list keys": lambda: me.keys("*"),
    "monitor": lambda: me.execute_command("MONITOR"),
    "config set": lambda: me.config_set("maxmemory", "1"),
    "push a warm job": lambda: me.rpush("warm:x:y", "{}"),
}
found = {}
for name, call in tries.items():
    try:
        call()
        found[name] = "allowed"
    except redis.exceptions.NoPermissionError:
        found[name] = "refused"
print(json.dumps(found))
"""


def worker_of(run_id: str, variation: int) -> str:
    labels = [f"label=ai-course.run={run_id}", f"label=ai-course.variation={variation}"]
    return docker("ps", "-q", "--filter", labels[0], "--filter", labels[1])


def test_a_worker_container_can_touch_nothing_but_its_own_stream(api_process):
    api = api_process(OFFLINE_TOKEN_DELAY_MS=60, MAX_RUNS_PER_CLIENT=2)  # answers of ~8 s
    other = start_run(api.url, variations=1)["run_id"]
    run_id = start_run(api.url, variations=2)["run_id"]
    victim = wait_for(lambda: worker_of(run_id, 1), timeout=90, what="the worker's container")
    found = json.loads(docker("exec", "-e", f"OTHER={other}", victim, "python", "-c", ATTACK))
    assert set(found.values()) == {"refused"}, found
    for run in (run_id, other):
        done = by_variation(read_events(api.url, run, timeout=120), "variation_done")
        assert {d["status"] for d in done.values()} == {"succeeded"}


def test_redis_wants_a_password_and_refuses_config_even_to_the_api(stack):
    url = urlsplit(stack["REDIS_URL"])
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=url.hostname, port=url.port, retry=one_try()).ping()
    as_api = redis.Redis.from_url(stack["REDIS_URL"])
    assert as_api.ping()
    for call in (lambda: as_api.config_set("requirepass", ""), lambda: as_api.keys("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()


def test_a_redis_restart_mid_run_keeps_its_address_and_the_run(api_process, stack):
    redis_name = f"{stack['DEPLOYMENT']}-redis"
    policy = docker("inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", redis_name)
    assert policy == "unless-stopped"
    before = docker("port", redis_name, "6379/tcp")
    api = api_process(OFFLINE_TOKEN_DELAY_MS=60)  # answers of ~8 s: the restart lands mid-run
    run_id = start_run(api.url, variations=2)["run_id"]
    read_events(api.url, run_id, until=lambda found: found[-1][1] == "token", timeout=120)
    docker("restart", redis_name)
    assert docker("port", redis_name, "6379/tcp") == before
    wait_for(lambda: httpx.get(f"{api.url}/ready").status_code == 200, timeout=60)
    done = by_variation(read_events(api.url, run_id, timeout=180), "variation_done")
    assert [done[i]["status"] for i in range(2)] == ["succeeded"] * 2
    again = start_run(api.url, variations=1)["run_id"]
    assert read_events(api.url, again, timeout=120)[-1][2]["status"] == "done"
    gone = lambda: not docker("ps", "-aq", "--filter", f"label=ai-course.run={run_id}")  # noqa: E731
    wait_for(gone, timeout=60, what="the containers removed")


# Run inside a worker's container: what an earlier version took, Redis going from 10 to 463 MiB and
# the API from 89 to 238 MB: four entries of 50 MB and two 50 MB `token` events into the worker's
# own stream. Then one event of 1 MiB, which Redis takes but the relay refuses.
FLOOD = """
import json, os, redis
me = redis.Redis.from_url(os.environ["REDIS_URL"])
stream = f"run:{os.environ['RUN_ID']}:v:{os.environ['VARIATION']}:events"
blob = b"x" * (50 * 2**20)
token = b'{"text": "' + blob + b'"}'
found = []
for fields in [{"blob": blob}] * 4 + [{"event": "token", "data": token}] * 2:
    try:
        me.xadd(stream, fields)
        found.append("stored")
    except redis.exceptions.ConnectionError:
        found.append("dropped")
print(json.dumps(found), flush=True)
me.xadd(stream, {"event": "token", "data": json.dumps({"text": "y" * 2**20})})
"""


def peak_memory_bytes(container: str) -> int:
    """The container's peak memory since it started (its cgroup's, v1 or v2)."""
    for path in ("memory/memory.max_usage_in_bytes", "memory.peak"):
        found = docker("exec", container, "cat", f"/sys/fs/cgroup/{path}", check=False)
        if found.isdigit():
            return int(found)
    raise AssertionError(f"no memory peak readable in {container}")


def peak_rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return (
        int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        * 1024
    )


def test_a_worker_cannot_flood_redis_or_the_api(api_process, stack):
    redis_name = f"{stack['DEPLOYMENT']}-redis"
    host = json.loads(docker("inspect", redis_name))[0]
    assert host["HostConfig"]["Memory"] == 512 * 2**20  # and Redis itself stops at its maxmemory
    args = host["Args"]
    assert args[args.index("--maxmemory") + 1] == "256mb"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    api = api_process(OFFLINE_TOKEN_DELAY_MS=150)  # answers of ~20 s: the flood lands mid-run
    run_id = start_run(api.url, variations=2)["run_id"]
    victim = wait_for(lambda: worker_of(run_id, 1), timeout=90, what="the worker's container")
    redis_before, api_before = peak_memory_bytes(redis_name), peak_rss_bytes(api.pid)
    # Once cut off, its container is removed under the `docker exec`, which then ends with 137.
    flood = subprocess.run(
        ["docker", "exec", victim, "python", "-c", FLOOD],
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = json.loads(flood.stdout.splitlines()[0])
    assert found == ["dropped"] * 6  # Redis cut the connection of each before storing it
    done = by_variation(read_events(api.url, run_id, timeout=180), "variation_done")
    assert done[0]["status"] == "succeeded" and done[1]["status"] == "failed"
    assert "over the 65,536-byte limit: cut off" in done[1]["reason"]
    assert peak_memory_bytes(redis_name) - redis_before < 64 * 2**20
    assert peak_rss_bytes(api.pid) - api_before < 32 * 2**20
