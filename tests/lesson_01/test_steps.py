"""Lesson 01's steps (code/lesson01/step1_api.py ... code/lesson01/step5_shutdown.py): each keeps
the names and the shape of the one before and adds its idea; `make lesson-01 STEP=K` serves step K;
each step, served as the doc serves it, prints what docs/01-agent-api.md shows; and the last step
and the production version (code/lesson01/production_api.py) answer alike.

The doc's `curl` commands are run against each step by tests/repo/test_docs.py, and step 5's
SIGTERM commands by tests/repo/test_docs_commands.py.
"""

import json
import os
import re
import signal
import subprocess
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx_sse import connect_sse

from support.lessons import ROOT, module_name, step_files
from support.ports import free_port
from support.server import offline_environment
from support.waiting import answers_200, wait_for
from tests.support.steps import dropped_names, make_dry_run, step_changes

STEPS = [
    "code/lesson01/step1_api.py",
    "code/lesson01/step2_request_ids.py",
    "code/lesson01/step3_metrics.py",
    "code/lesson01/step4_errors.py",
    "code/lesson01/step5_shutdown.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
PRODUCTION = "code/lesson01/production_api.py"
DOC = ROOT / "docs" / "01-agent-api.md"


def dry_run(*goals: str) -> subprocess.CompletedProcess:
    return make_dry_run("-o", ".venv/.lesson01", *goals)


def test_the_steps_are_the_files_make_serves():
    assert [str(p.relative_to(ROOT)) for p in step_files("01")] == STEPS
    make = dry_run("lesson-01")
    assert make.returncode == 0, make.stderr
    assert make.stdout.splitlines()[-1].endswith(
        f"python -m {module_name(STEPS[-1])}"
    )  # alone: the last step


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5])
def test_make_lesson_01_step_k_serves_step_k_with_a_banner(step):
    make = dry_run("lesson-01", f"STEP={step}")
    assert make.returncode == 0, make.stderr
    assert make.stdout.splitlines()[-1].endswith(f"python -m {module_name(STEPS[step - 1])}")
    assert f"Lesson 01, step {step} of 5" in make.stdout
    assert f"docs/01-agent-api.md, section {step}" in make.stdout


def test_a_step_that_does_not_exist_is_refused_by_name():
    make = make_dry_run("lesson-01", "STEP=9")
    assert make.returncode != 0
    assert 'there is no step "9"' in make.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = dropped_names(before, after)
    assert not missing, f"{after} drops {missing}"


# What each step may take away from the one before: the lines it changes (step 2: the logging
# call; step 4: the app's line, the invoke and stream loops, the stream's error).
MOST_REMOVED = {PAIRS[0]: 1, PAIRS[1]: 1, PAIRS[2]: 5, PAIRS[3]: 0}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > 2 * len(removed)


# --- Run as the doc runs them -------------------------------------------------------------------


def test_step_2_logs_the_line_the_doc_shows(start_server):
    """Section 2: the doc's curl with its X-Request-ID, and the server's log line for it."""
    server = start_server("lesson01/step2_request_ids.py", OFFLINE_TOKEN_DELAY_MS="0")
    shown = re.search(r"The server's terminal shows.*?```json\n(.*?)\n```", DOC.read_text(), re.S)
    expected = json.loads(shown[1])
    answer = httpx.post(
        f"{server.url}/v1/invoke",
        json={"query": "What is a container?"},
        headers={"X-Request-ID": expected["request_id"]},
        timeout=30,
    )
    assert answer.headers["x-request-id"] == expected["request_id"]

    def request_line():
        for line in server.log_text().splitlines():
            if line.startswith("{") and '"message": "request"' in line:
                entry = json.loads(line)
                if entry["request_id"] == expected["request_id"]:
                    return entry
        return None

    deadline = time.monotonic() + 10
    while (entry := request_line()) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert entry is not None, server.log_text()
    assert entry.keys() == expected.keys()
    volatile = {"time", "duration_ms"}
    assert {k: v for k, v in entry.items() if k not in volatile} == {
        k: v for k, v in expected.items() if k not in volatile
    }
    # Every line the server wrote is one JSON object: uvicorn's own lines too.
    for line in server.log_text().splitlines():
        assert json.loads(line)["level"], line


# --- The last step and the production version answer alike --------------------------------------

# Requests both must answer alike: the status, the body's keys and the fields step 5 sends (the
# production version's answers add request_id, cached, latency_ms and created_at).
ASKED = [
    ("GET", "/health", None),
    ("GET", "/ready", None),
    ("POST", "/v1/invoke", {"query": "What is a container?"}),
    ("POST", "/v1/invoke", {"query": ""}),
    ("POST", "/v1/invoke", {}),
    ("POST", "/v1/invoke", {"query": "x" * 4001}),
    ("GET", "/v1/invoke", None),
    ("GET", "/no-such-page", None),
]
VOLATILE = {"request_id"}


def comparable(body):
    if isinstance(body, dict):
        return {k: comparable(v) for k, v in body.items() if k not in VOLATILE}
    if isinstance(body, list):
        return [comparable(item) for item in body]
    return body


@pytest.fixture
def last_step_and_production(load_script):
    last, production = load_script(STEPS[-1][5:]), load_script(PRODUCTION[5:])
    with TestClient(last.app) as step, TestClient(production.app) as prod:
        yield step, prod


@pytest.mark.parametrize("method, path, body", ASKED, ids=lambda v: str(v)[:30])
def test_the_last_step_and_the_production_version_answer_alike(
    last_step_and_production, method, path, body
):
    step, prod = last_step_and_production
    answers = [client.request(method, path, json=body) for client in (step, prod)]
    assert answers[0].status_code == answers[1].status_code, [a.text for a in answers]
    assert answers[0].headers.get("allow") == answers[1].headers.get("allow")
    mine, theirs = (comparable(a.json()) for a in answers)
    if path == "/v1/invoke" and answers[0].status_code == 200:
        theirs = {k: v for k, v in theirs.items() if k in mine}  # the production's extra fields
    assert mine == theirs


def test_the_last_step_and_the_production_version_stream_alike(last_step_and_production):
    streams = []
    for client in last_step_and_production:
        with connect_sse(client, "POST", "/v1/stream", json={"query": "stream me"}) as source:
            assert source.response.headers["content-type"].startswith("text/event-stream")
            streams.append([(e.event, e.data) for e in source.iter_sse()])
    assert streams[0] == streams[1]
    assert streams[0][-1] == ("message", "[DONE]") and len(streams[0]) > 10


def test_the_last_step_and_the_production_version_count_the_same_series(
    last_step_and_production,
):
    series = []
    for client in last_step_and_production:
        client.post("/v1/invoke", json={"query": "count me"})
        client.get("/no-such-page")
        text = client.get("/metrics").text
        series.append(
            {line.split(" ")[0] for line in text.splitlines() if line.startswith("http_")}
        )
    assert series[0] <= series[1]
    assert 'http_requests_total{method="GET",route="unmatched",status="404"}' in series[0]


def test_make_lesson_01_serves_the_last_step_and_answers_the_readmes_curl():
    """The main job, as README.md's quickstart runs it: `make lesson-01`, then its curl."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    expected = json.loads(
        readme.split("and that `curl` answers", 1)[1].split("```json\n")[1].split("```")[0]
    )
    port = free_port()
    env = offline_environment(PORT=port, HOST="127.0.0.1")
    env = {k: v for k, v in env.items() if not k.startswith("MAKE")}  # not `make test`'s flags
    make = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.lesson01", "lesson-01"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: answers_200(f"{url}/ready"), timeout=60, interval=0.2, what="make lesson-01"
        )
        answer = httpx.post(f"{url}/v1/invoke", json={"query": "What is a container?"}, timeout=30)
        assert answer.json() == expected
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        output, _ = make.communicate(timeout=30)
    assert f"Lesson 01, step 5 of 5: {STEPS[-1]}" in output, output
    assert f"Agent API on http://127.0.0.1:{port}" in output, output
