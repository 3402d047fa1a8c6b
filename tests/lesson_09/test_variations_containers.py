"""Lesson 05's run as one trace with real worker containers (marker `container`, `make
traces-test`). The API runs on this machine as `make lesson-05` runs it and exports to a collector
on 127.0.0.1; its workers, one cold container and one warm, export from their own processes to
WORKER_OTEL_EXPORTER_OTLP_ENDPOINT: the same collector at the lesson network's gateway, where a
container reaches this machine. Given the API's endpoint instead, a worker would send to its own
127.0.0.1, and the run's trace would have no workers in it.

`TRACES=1 scripts/lesson-05.sh`, the learner's way to set both, is checked with stand-ins for
lesson 09's viewer and its ingest: the ingest connected to the network (never the viewer), the
endpoints printed, disconnected by `down`."""

import ipaddress
import json
import os
import subprocess
import uuid

import pytest
import redis

from research_agent.worker.job import warm_queue_key, warm_ready_key
from support.lessons import ROOT
from support.otlp import OtlpCollector
from support.waiting import wait_for
from tests.support.docker_cli import docker
from tests.support.variations import by_variation, read_events, start_run

pytestmark = pytest.mark.container
SCRIPT = str(ROOT / "scripts" / "lesson-05.sh")


@pytest.fixture
def network_collector(stack):
    """A collector on 127.0.0.1 and on the gateway of the lesson's network (this machine, as its
    containers reach it): (collector, gateway, the network's subnet)."""
    network = json.loads(docker("network", "inspect", stack["WORKER_NETWORK"]))[0]
    config = network["IPAM"]["Config"][0]
    with OtlpCollector("http/protobuf", hosts=("127.0.0.1", config["Gateway"])) as collector:
        yield collector, config["Gateway"], ipaddress.ip_network(config["Subnet"])


def attributes(span) -> dict:
    return {a.key: a.value for a in span.attributes}


def test_worker_containers_export_their_spans_into_the_runs_trace(
    api_process, stack, network_collector
):
    collector, gateway, subnet = network_collector
    api = api_process(
        OFFLINE_TOKEN_DELAY_MS=1,
        WARM_WORKERS=1,
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,  # 127.0.0.1: no container reaches it
        WORKER_OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint_at(gateway),
        OTEL_BSP_SCHEDULE_DELAY=100,
    )
    with redis.Redis.from_url(stack["REDIS_URL"]) as client:
        ready = warm_ready_key(warm_queue_key(stack["DEPLOYMENT"], "*"))
        wait_for(lambda: list(client.scan_iter(ready)), timeout=120, what="a warm worker ready")

    # As docs/09's challenge asks: the last variation reads eight search results.
    run_id = start_run(api.url, variations=2, overrides=[{}, {"search_depth": 8}])["run_id"]
    events = read_events(api.url, run_id, timeout=120)
    kinds = {i: e["worker"] for i, e in by_variation(events, "container_started").items()}
    assert sorted(kinds.values()) == ["cold", "warm"]  # the job in its environment, and in Redis
    done = by_variation(events, "variation_done")
    assert [done[i]["status"] for i in range(2)] == ["succeeded"] * 2

    def whole_run():
        found = collector.spans()
        agents = sum(s.name.startswith("invoke_agent") for s in found)
        return found if agents == 2 and any(s.name == "run" for s in found) else None

    found = wait_for(whole_run, timeout=30, what="the API's run span and both workers' agents")
    (run,) = [s for s in found if s.name == "run"]
    assert attributes(run)["lesson05.run_id"].string_value == run_id
    # Every worker span is in the run's trace (the API's other requests make traces of their own).
    workers = collector.spans("research-agent-worker")
    assert {s.trace_id for s in workers} == {run.trace_id}
    assert sorted(s.name for s in workers if s.name.startswith("variation ")) == [
        "variation 0",
        "variation 1",
    ]
    mine = [s for s in found if s.trace_id == run.trace_id]
    by_id = {s.span_id: s for s in mine}
    senders = collector.senders()
    assert set(senders) == {"lesson05-variations", "research-agent-worker"}
    # Sent by the containers themselves, from their addresses on the lesson's network.
    assert senders["lesson05-variations"] == {"127.0.0.1"}
    assert all(ipaddress.ip_address(peer) in subnet for peer in senders["research-agent-worker"])

    def under(span, ancestor) -> bool:
        while span is not None:
            if span.span_id == ancestor.span_id:
                return True
            span = by_id.get(span.parent_span_id)
        return False

    for index in range(2):
        (launch,) = [s for s in mine if s.name == f"launch variation {index}"]
        (variation,) = [s for s in mine if s.name == f"variation {index}"]
        assert launch.parent_span_id == run.span_id
        assert variation.parent_span_id == launch.span_id
        settings = attributes(variation)  # what the challenge reads off the widest span
        assert settings["lesson05.worker"].string_value == kinds[index]
        assert settings["lesson05.search_depth"].int_value == [4, 8][index]
        assert settings["lesson05.answer_style"].string_value == ["bullets", "brief"][index]
        names = {s.name.split(" ")[0] for s in mine if s is not variation and under(s, variation)}
        assert {"invoke_agent", "chat", "execute_tool"} <= names, names


def lesson_05_script(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, command], env=env, capture_output=True, text=True, timeout=120)


def networks() -> list[str]:
    return docker("network", "ls", "--format", "{{.Name}}").split()


def test_traces_connects_lesson_09s_ingest_and_down_disconnects_it():
    name, project = f"l05t-{uuid.uuid4().hex[:8]}", f"l09t-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NAME": name, "TRACES": "1", "VIEWER_PROJECT": project}
    missing = lesson_05_script("up", env)
    assert missing.returncode == 1 and "make lesson-09" in missing.stderr, missing.stderr
    assert name not in networks()  # it stopped before creating anything

    # Lesson 09's viewer (published on a loopback port) and its ingest, as its Compose project
    # labels them.
    started = {}
    for service, publish in (("viewer", ["-p", "127.0.0.1::6006"]), ("ingest", [])):
        started[service] = f"{project}-{service}-1"
        labels = [f"com.docker.compose.project={project}", f"com.docker.compose.service={service}"]
        docker("run", "-d", "--name", started[service], "--label", labels[0], "--label", labels[1],
               *publish, "python:3.11-slim", "sleep", "300")  # fmt: skip
    viewer, ingest = started["viewer"], started["ingest"]
    try:
        up = lesson_05_script("up", env)
        assert up.returncode == 0, up.stderr
        values = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)
        address = f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}'
        ip = docker("inspect", "-f", address, ingest)
        port = docker("port", viewer, "6006/tcp").splitlines()[0].rsplit(":", 1)[1]
        # The API (yours, on this machine) to the viewer; the workers to the ingest only.
        assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://127.0.0.1:{port}"
        assert values["WORKER_OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{ip}:4318"
        assert f"connected lesson 09's trace ingest ({ingest}) to the network {name} at {ip}" in (
            up.stderr
        )
        members = docker("network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{end}}", name)
        assert viewer not in members.split()  # no worker reaches the viewer itself
        again = lesson_05_script("up", env)  # a second `make lesson-05`: already connected
        assert again.returncode == 0 and "connected" not in again.stderr, again.stderr
        assert again.stdout == up.stdout
    finally:
        down = lesson_05_script("down", env)
        running = docker("inspect", "-f", "{{.State.Running}}", ingest, check=False)
        docker("rm", "-f", viewer, ingest, check=False)
    assert f"disconnected {ingest} from the network {name}" in down.stdout, down.stdout
    assert name not in networks()
    assert running == "true"  # disconnected, not stopped: it is lesson 09's
