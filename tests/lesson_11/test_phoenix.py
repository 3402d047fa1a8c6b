"""`make evals PHOENIX_URL=...` against lesson 09's viewer, the real one: Phoenix from
docker/phoenix's image (the one `make lesson-09` builds), in a container of its own on a free
loopback port. The spans go to Phoenix, the evaluators read them back from it, and the results are
an experiment there: one run per case, linked to its trace, an annotation per evaluator. A broken
agent read from Phoenix turns the gate red as it does in memory.

In the container suite (`make evals-phoenix-test`): it needs Docker, and Phoenix takes minutes to
start on a busy machine."""

import subprocess
import sys
import uuid

import pytest

from support.lessons import ROOT
from support.ports import free_port
from support.server import offline_environment
from support.waiting import answers_200, wait_for
from tests.support.docker_cli import docker

pytestmark = pytest.mark.container

IMAGE = "lesson09-phoenix:local"  # code/lesson09/compose.traces.yaml's VIEWER_IMAGE default
KINDS = ["--kind", "needs_python", "--kind", "injection", "--kind", "api_limits"]


@pytest.fixture(scope="module")
def phoenix():
    subprocess.run(
        ["docker", "build", "-q", "-t", IMAGE, "docker/phoenix"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=1800,
    )
    port, name = free_port(), f"lesson11-phoenix-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--rm", "--name", name, "-p", f"127.0.0.1:{port}:6006", IMAGE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: answers_200(f"{url}/healthz"),
            timeout=600,
            interval=1,
            what="Phoenix answering /healthz",
        )
        yield url
    finally:
        docker("rm", "-f", name, check=False)


def evals(url: str, *code: str) -> subprocess.CompletedProcess:
    """The gate with --phoenix, in a fresh process; `code`: Python run instead of
    `python -m lesson11` (to pass the gate a broken agent)."""
    command = ["-c", *code] if code else ["-m", "lesson11"]
    return subprocess.run(
        [sys.executable, *command, "--quiet", "--phoenix", url, *KINDS],
        cwd=ROOT,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_the_evaluators_read_the_spans_back_from_phoenix_and_log_an_experiment(phoenix):
    from phoenix.client import Client

    done = evals(phoenix)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"spans read from Phoenix at {phoenix}" in done.stdout
    assert "gate passed" in done.stdout
    link = done.stdout.strip().splitlines()[-1]
    assert link.startswith(f"experiment logged in Phoenix: {phoenix}/datasets/")
    client = Client(base_url=phoenix)
    (experiment,) = client.experiments.list(dataset_id=link.split("/datasets/")[1].split("/")[0])
    ran = client.experiments.get_experiment(experiment_id=experiment["id"])
    runs, evaluations = ran["task_runs"], ran["evaluation_runs"]
    assert len(runs) == 16  # 5 arithmetic, 4 injection, 7 API cases: one run each
    assert all(run["trace_id"] for run in runs if run["output"]["status"] == 200)
    assert {e.name for e in evaluations} >= {"trajectory", "approval", "budget", "no_leak"}
    assert all(e.result["label"] == "pass" for e in evaluations)
    spans = client.spans.get_spans(project_identifier="research-agent-evals", limit=1000)
    assert any(span["name"] == "invoke_agent research-agent" for span in spans)


def test_a_broken_agent_read_from_phoenix_fails_the_gate(phoenix):
    code = (
        "import sys; from lesson11.gate import main; "
        "sys.exit(main(sys.argv[1:], middleware=[]))"  # no approval before run_python
    )
    done = evals(phoenix, code)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert "gate FAILED: python-power, python-mixed, python-brackets" in done.stdout
