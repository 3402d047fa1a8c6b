"""Who may read, write and erase traces (`make traces-test`): lesson 09's stack attacked from
inside its agent container, and from a lesson 05 worker container traced into lesson 09's viewer
as `TRACES=1 make lesson-05` sets it up. Each attacker tries the endpoint it was given and the
viewer's own address: read every span (REST and GraphQL), forge spans into the traces it read,
delete a span of another trace. Only the learner, on the viewer's 127.0.0.1 port, may read and
delete; the containers send spans and nothing else.

What remains, and is asserted so the lesson says it truthfully: a sender that knows a trace id
can still add spans to that trace (OTLP carries no proof of who made a span). It learns no id it
was not given: a worker holds only its own run's."""

import json
import os
import subprocess
import uuid

import pytest

from support.lessons import ROOT
from support.waiting import wait_for
from tests.support.docker_cli import docker
from tests.support.variations import start_run

pytestmark = pytest.mark.container

# Run inside the attacked container with its own Python and packages (`python -c`). ENDPOINTS: the
# base URLs to try; DELETE: span ids to erase, besides those it read; FORGE_INTO: trace ids to
# write into when it could read none. Prints, per endpoint, what it got.
ATTACK = r"""
import json, os, secrets, time
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

def call(method, url, **kwargs):
    try:
        return httpx.request(method, url, timeout=3, **kwargs)
    except httpx.HTTPError as error:
        return type(error).__name__

def status(response):
    return response if isinstance(response, str) else response.status_code

def forged(trace_id):
    request = ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    name = resource.resource.attributes.add()
    name.key, name.value.string_value = "service.name", "attacker"
    span = resource.scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes.fromhex(trace_id), secrets.token_bytes(8)
    span.name = "forged"
    span.start_time_unix_nano = time.time_ns()
    span.end_time_unix_nano = span.start_time_unix_nano + 1000
    return request.SerializeToString()

report = {}
for base in os.environ["ENDPOINTS"].split():
    listed = call("GET", base + "/v1/projects/default/spans", params={"limit": 1000})
    spans = listed.json().get("data", []) if status(listed) == 200 else []
    traces = sorted({s["context"]["trace_id"] for s in spans})
    read = [s["context"]["span_id"] for s in spans][:20]
    projects = {"query": "{ projects { edges { node { name } } } }"}
    graphql = call("POST", base + "/graphql", json=projects)
    targets = traces[:5] or os.environ.get("FORGE_INTO", "").split()
    protobuf = {"content-type": "application/x-protobuf"}
    write = lambda t: call("POST", base + "/v1/traces", content=forged(t), headers=protobuf)
    erase = lambda s: call("DELETE", f"{base}/v1/spans/{s}")
    report[base] = {
        "read": [status(listed), len(spans)],
        "traces": traces,
        "graphql": [status(graphql), status(graphql) == 200 and "data" in graphql.json()],
        "forged": {t: status(write(t)) for t in targets},
        "deleted": {s: status(erase(s)) for s in [*os.environ.get("DELETE", "").split(), *read]},
    }
print(json.dumps(report))
"""


def attack(container: str, **env: str) -> dict:
    options = [item for name, value in env.items() for item in ("-e", f"{name}={value}")]
    return json.loads(docker("exec", *options, container, "python", "-c", ATTACK, timeout=120))


def viewer_addresses(lesson09) -> list[str]:
    """The viewer's own address on each of its networks, as an attacker might guess it."""
    found = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
        lesson09.container("viewer"),
    )  # fmt: skip
    return [f"http://{ip}:6006" for ip in found.split()] + ["http://viewer:6006"]


def a_victims_trace(lesson09, question: str) -> tuple[str, list[dict]]:
    """A trace the attacker was not told of (another service's request), all its spans in."""
    trace_id = uuid.uuid4().hex
    assert lesson09.ask_inside(question, f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01") == 200
    return trace_id, lesson09.wait_for_trace(trace_id, "invoke_agent research-agent")


def assert_sent_spans_only(report: dict, lesson09, victim: str, before: list[dict]) -> None:
    for base, got in report.items():
        assert got["traces"] == [] and got["read"][1] == 0, (base, got)  # no span read
        assert got["graphql"][1] is False, (base, got)  # nor through GraphQL
        assert set(got["deleted"].values()) <= {404, 405, "ConnectTimeout", "ConnectError"}, got
    # The victim's trace as it was: nothing erased from it, nothing written into it.
    after = lesson09.spans(victim)
    assert sorted(s["spanId"] for s in after) == sorted(s["spanId"] for s in before)


def test_the_agent_container_can_send_spans_and_nothing_else(lesson09):
    victim, before = a_victims_trace(lesson09, "What is an image layer?")
    agent = lesson09.container("agent")
    endpoint = docker("exec", agent, "printenv", "OTEL_EXPORTER_OTLP_ENDPOINT")
    endpoints = " ".join([endpoint, *viewer_addresses(lesson09)])
    report = attack(agent, ENDPOINTS=endpoints, DELETE=before[0]["spanId"])
    assert_sent_spans_only(report, lesson09, victim, before)
    assert report[endpoint]["deleted"] == {before[0]["spanId"]: 404}  # answered by the ingest


def lesson_05_traced(stack: dict, lesson09) -> dict:
    """`TRACES=1 scripts/lesson-05.sh up` on the lesson 05 stack, joined to this lesson 09."""
    env = {**os.environ, "NAME": stack["DEPLOYMENT"], "TRACES": "1"}
    env["VIEWER_PROJECT"] = lesson09.project
    script = str(ROOT / "scripts" / "lesson-05.sh")
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    return dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line)


def worker_of(run_id: str) -> str:
    labels = [f"label=ai-course.run={run_id}", "label=ai-course.variation=0"]
    return docker("ps", "-q", "--filter", labels[0], "--filter", labels[1])


def test_a_lesson_05_worker_can_send_spans_and_nothing_else(lesson09, stack, api_process):
    victim, before = a_victims_trace(lesson09, "What is a multi-stage build for?")
    traced = lesson_05_traced(stack, lesson09)
    api = api_process(
        OFFLINE_TOKEN_DELAY_MS=250,  # an answer of ~30 s: the worker is there to be attacked
        OTEL_EXPORTER_OTLP_ENDPOINT=traced["OTEL_EXPORTER_OTLP_ENDPOINT"],
        WORKER_OTEL_EXPORTER_OTLP_ENDPOINT=traced["WORKER_OTEL_EXPORTER_OTLP_ENDPOINT"],
        OTEL_BSP_SCHEDULE_DELAY=100,
    )
    run_id = start_run(api.url, variations=1)["run_id"]
    worker = wait_for(lambda: worker_of(run_id), timeout=90, what="the worker's container")
    endpoint = docker("exec", worker, "printenv", "OTEL_EXPORTER_OTLP_ENDPOINT")
    assert endpoint == traced["WORKER_OTEL_EXPORTER_OTLP_ENDPOINT"]
    own = docker("exec", worker, "printenv", "TRACEPARENT").split("-")[1]  # its run's trace
    endpoints = " ".join([endpoint, *viewer_addresses(lesson09)])
    report = attack(worker, ENDPOINTS=endpoints, DELETE=before[0]["spanId"], FORGE_INTO=own)
    assert_sent_spans_only(report, lesson09, victim, before)

    # What remains: the trace it was given takes its spans, a forged one too.
    assert report[endpoint]["forged"] == {own: 200}
    wait_for(
        lambda: "forged" in {s["name"] for s in lesson09.spans(own)},
        timeout=30,
        what="the worker's forged span in its own run's trace",
    )


# Run in a container of its own on the agent's network, Python's standard library only: what the
# endpoint the agent sends to answers to each kind of request. Raw HTTP/1.1, so that nothing
# rewrites the framing (a chunked body, a Content-Length larger than what is sent).
BOUNDS = r"""
import json, os, socket, sys
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])

def send(head, body=b""):
    with socket.create_connection((url.hostname, url.port), timeout=20) as s:
        s.sendall(head.encode() + b"\r\nHost: ingest\r\nConnection: close\r\n\r\n" + body)
        return int(s.recv(64).split()[1])

def post(*headers, body=b""):
    return send("\r\n".join(["POST /v1/traces HTTP/1.1", *headers]), body)

pb = "Content-Type: application/x-protobuf"
report = {
    "export": post(pb, "Content-Length: 0"),
    "json": post("Content-Type: application/json", "Content-Length: 2", body=b"{}"),
    "gzip": post(pb, "Content-Encoding: gzip", "Content-Length: 0"),
    "chunked": post(pb, "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
    "too large": post(pb, "Content-Length: 16777217", body=bytes(16384)),
    "get": send("GET /v1/traces HTTP/1.1"),
}
flood = [send("GET / HTTP/1.1") for _ in range(520)]
report["after a flood"] = post(pb, "Content-Length: 0")
print(json.dumps(report))
"""


def test_the_ingest_takes_bounded_protobuf_exports_only(lesson09):
    endpoint = docker(
        "exec", lesson09.container("agent"), "printenv", "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    name = f"{lesson09.project}-bounds-{uuid.uuid4().hex[:6]}"
    options = ["--rm", "--network", f"{lesson09.project}_back", "--name", name]
    found = json.loads(
        docker("run", *options, "python:3.11-slim", "python3", "-c", BOUNDS, endpoint, timeout=300)
    )
    assert found == {
        "export": 200,
        "json": 415,
        "gzip": 415,
        "chunked": 411,
        "too large": 413,
        "get": 405,
        "after a flood": 429,  # more than 500 requests in 10 s from one address
    }, found


def test_a_page_elsewhere_cannot_read_the_viewer(lesson09):
    """Issue 70, item 11: the viewer (Phoenix: every span, REST, GraphQL and DELETE, with no
    authentication) answered any Host on its 127.0.0.1 port, so a page that rebound its own name to
    127.0.0.1, or that sent its Origin, could read traces and forge spans that decide lesson 11's
    gate. Now a Host not its own is a 400, a foreign Origin a 403; the learner is answered."""
    import httpx

    spans = lesson09.viewer + "/v1/projects/default/spans"
    rebound = httpx.get(spans, headers={"Host": "attacker.example:6006"}, timeout=30)
    page = httpx.get(spans, headers={"Origin": "http://attacker.example"}, timeout=30)
    learner = httpx.get(spans, timeout=30)
    assert rebound.status_code == 400 and rebound.json()["error"]["type"] == "untrusted_host"
    assert page.status_code == 403 and page.json()["error"]["type"] == "origin_not_allowed"
    assert learner.status_code == 200, learner.text[:300]
