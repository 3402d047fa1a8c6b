"""`docker stop` against the real image: the grace it is given is the grace the app uses.

Runs research-agent:optimized (CONTAINER_SHUTDOWN_IMAGE to test another tag) with the offline
model slowed to 100 ms a word, so one answer streams for over 12 seconds (longer than a plain
`docker stop` waits), and stops the container while the stream is open:

- `docker stop -t 30` with GRACEFUL_SHUTDOWN_SECONDS=28: the stream finishes with `final`, [DONE].
- a plain `docker stop` (10 s) with the defaults (1 s drain + 8 s grace): the stream ends with an
  `error` event of type `shutting_down` and [DONE], and the container exits by itself (not 137,
  which would mean Docker had to SIGKILL it).

Marker `container` (run by `make smoke`, left out of `make test`). Every docker command and every
read has a timeout; the containers carry a label and are removed.
"""

import json
import os
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from tests.support.docker_cli import docker

pytestmark = pytest.mark.container

IMAGE = os.environ.get("CONTAINER_SHUTDOWN_IMAGE", "research-agent:optimized")
QUERY = "Why use a multi-stage Docker build?"
LABEL = "course.test=container-shutdown"


@pytest.fixture
def run_agent():
    started = []

    def run(**env) -> tuple[str, str]:
        name = f"shutdown-test-{uuid.uuid4().hex[:8]}"
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        container = docker(
            "run", "-d", "--name", name, "--label", LABEL, "-p", "127.0.0.1::8000",
            "--read-only", "--tmpfs", "/tmp", *env_args, IMAGE,
        )  # fmt: skip
        started.append(container)
        port = docker("port", container, "8000/tcp").splitlines()[0].rpartition(":")[2]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    return container, base
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, docker("logs", "--tail", "50", container)
            time.sleep(0.25)

    yield run
    for container in started:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)


def stream_and_stop(container: str, base: str, *stop_args: str) -> dict:
    """Open a stream, `docker stop` the container after its first token, read the rest."""
    events, name, first_token = [], "", threading.Event()
    started = time.monotonic()

    def read() -> None:
        nonlocal name
        try:
            with httpx.stream(
                "POST", f"{base}/v1/research/stream", json={"query": QUERY}, timeout=60
            ) as response:
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        name = line[6:].strip()
                    elif line.startswith("data:"):
                        events.append((name, line[5:].strip()))
                        name = ""
                        if events[-1][0] == "token":
                            first_token.set()
        finally:
            first_token.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_token.wait(60), "no token arrived"
    stop_started = time.monotonic()
    docker("stop", *stop_args, container, timeout=90)
    stopped_after = time.monotonic() - stop_started
    reader.join(60)
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container))
    return {
        "events": events,
        "names": [n for n, _ in events],
        "stream_seconds": time.monotonic() - started,
        "stop_seconds": stopped_after,
        "exit_code": state["ExitCode"],
        "logs": docker("logs", "--tail", "30", container),
    }


def test_docker_stop_t_30_lets_a_stream_longer_than_10_seconds_finish(run_agent):
    container, base = run_agent(GRACEFUL_SHUTDOWN_SECONDS=28, OFFLINE_TOKEN_DELAY_MS=100)
    result = stream_and_stop(container, base, "-t", "30")

    assert result["events"][-1] == ("", "[DONE]"), result["names"][-5:]
    assert result["names"][-2] == "final", result["logs"]
    assert result["names"].count("token") > 100
    # Longer than a plain `docker stop` would have waited: only the 30 s grace let it finish.
    assert result["stream_seconds"] > 12, result["stream_seconds"]
    assert result["exit_code"] != 137, result["logs"]  # exited by itself, before the 30 s


def test_plain_docker_stop_ends_a_longer_stream_with_shutting_down_and_exits_by_itself(run_agent):
    container, base = run_agent(OFFLINE_TOKEN_DELAY_MS=100)  # default budget: 1 s drain + 8 s grace
    result = stream_and_stop(container, base)

    assert result["events"][-1] == ("", "[DONE]"), result["names"][-5:]
    assert "final" not in result["names"] and result["names"][-2] == "error", result["logs"]
    error = json.loads(result["events"][-2][1])["error"]
    assert error["type"] == "shutting_down" and error["retryable"] is True, error
    assert result["exit_code"] != 137, result["logs"]
    assert result["stop_seconds"] < 10, result  # Docker did not have to wait for its SIGKILL
    assert "request cut by shutdown" in result["logs"]


def test_the_challenge_a_shell_form_cmd_keeps_the_shell_as_process_1_deaf_to_sigterm():
    """docs/03's challenge, as its solution says: `CMD python main.py` runs
    `/bin/sh -c "python main.py"` (the image's sh, Debian's dash), which stays process 1 with
    python as its child; it ignores SIGTERM, so `docker stop` waits out its grace (2 s here, 10 s
    by default) and then SIGKILLs: exit code 137."""
    name = f"shutdown-test-{uuid.uuid4().hex[:8]}"
    try:  # the shell form's command, as Docker turns `CMD python main.py` into it
        docker(
            "run", "-d", "--name", name, "--label", LABEL, IMAGE, "/bin/sh", "-c", "python main.py"
        )
        deadline = time.monotonic() + 60
        while len(rows := docker("top", name, "-o", "pid,ppid,args").splitlines()[1:]) < 2:
            assert time.monotonic() < deadline, rows
            time.sleep(0.25)
        processes = {" ".join(row.split()[2:]): row.split()[:2] for row in rows}
        assert set(processes) == {"/bin/sh -c python main.py", "python main.py"}, rows
        shell_pid, _ = processes["/bin/sh -c python main.py"]
        assert processes["python main.py"][1] == shell_pid  # python is the shell's child
        started = time.monotonic()
        docker("stop", "-t", "2", name, timeout=90)
        assert time.monotonic() - started >= 2  # it waited out the grace: nobody heard SIGTERM
        assert docker("inspect", "--format", "{{.State.ExitCode}}", name) == "137"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
