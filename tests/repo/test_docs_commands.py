"""Commands the lessons tell a learner to type, taken from the docs and run as written.

A shell block marked `<!-- checked-by: tests/repo/test_docs_commands.py -->` is read from its page
here, so a change to the page changes what is tested.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from support.ports import free_port
from support.waiting import answers_200, wait_for

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- checked-by: tests/repo/test_docs_commands.py -->"


def checked_blocks(page: str) -> list[str]:
    """The shell blocks of docs/`page` that name this file as their check."""
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    return re.findall(re.escape(MARKER) + r"\n```bash\n(.*?)```", text, flags=re.S)


def section(page: str, heading: str) -> str:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    return text[start : text.index("\n## ", start + 1)]


# --- Lesson 01: SIGTERM mid-stream, and the challenge's exit status -------------------------------


def lesson_01_try_it() -> str:
    (block,) = [b for b in checked_blocks("01-agent-api.md") if "/v1/stream" in b]
    return block


def lesson_01_challenge() -> tuple[str, str]:
    """The line the challenge comments out and the command that shows curl's exit status."""
    challenge = section("01-agent-api.md", "## Challenge")
    line = re.search(r"comment out the line `([^`]+)`", challenge).group(1)
    status = re.search(r"run `([^`]*echo \$\?)`", challenge).group(1)
    return line, status


@pytest.mark.parametrize("end_in_time", [True, False], ids=["as-written", "challenge"])
def test_lesson_01s_sigterm_commands_stop_the_server_only_and_report_curls_status(
    tmp_path, end_in_time
):
    line, status_command = lesson_01_challenge()
    # The lesson's package in a folder of its own, run as `make lesson-01 STEP=5` runs it
    # (python -m lesson01.step5_shutdown: the working folder's lesson01 comes first).
    shutil.copytree(
        ROOT / "code" / "lesson01",
        tmp_path / "lesson01",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    script = (ROOT / "code" / "lesson01" / "step5_shutdown.py").read_text(encoding="utf-8")
    if not end_in_time:
        assert line in script
        script = script.replace(line, f"# {line}")
    (tmp_path / "lesson01" / "step5_shutdown.py").write_text(script, encoding="utf-8")
    port = free_port()
    # An editor open on the same file: the doc's command must leave it alone.
    editor = subprocess.Popen(
        ["tail", "-f", "lesson01/step5_shutdown.py"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        process_group=0,
    )
    group = editor.pid  # the doc's pkill is confined to this process group: others' servers
    server = subprocess.Popen(  # on a shared machine are not ours to stop
        [sys.executable, "-m", "lesson01.step5_shutdown"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PORT": str(port),
            "OFFLINE_TOKEN_DELAY_MS": "300",  # the doc's terminal 1
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=group,
    )
    try:
        wait_for(
            lambda: answers_200(f"http://127.0.0.1:{port}/ready"),
            timeout=60,
            interval=0.2,
            what="the lesson-01 shutdown server",
        )
        commands = lesson_01_try_it().replace("localhost:8000", f"localhost:{port}")
        shell = f'pkill() {{ command pkill -g {group} "$@"; }}\n{commands}\n{status_command}\n'
        result = subprocess.run(
            ["bash", "-c", shell], capture_output=True, text=True, timeout=90, cwd=tmp_path
        )
        assert "arguments must be" not in result.stderr, result.stderr
        assert server.wait(timeout=30) is not None  # the server got SIGTERM and exited
        assert editor.poll() is None, "the doc's command also stopped the editor"
        lines = [line for line in result.stdout.splitlines() if line]
        # /ready's answer and its status; the stream's curl, still writing to the same terminal,
        # may put a token line between them.
        ready = r'"message":"The server is shutting down"[^}]*\}\}(?:data:[^\n]*\n|\n)* 503\n'
        assert re.search(ready, result.stdout), lines
        # The last line is what `echo $?` printed: curl's status, not the /ready curl's.
        if end_in_time:
            assert "event: error" in result.stdout and lines[-2:] == ["data: [DONE]", "0"], lines
        else:
            assert "data: [DONE]" not in result.stdout and lines[-1] == "18", lines
    finally:
        for process in (server, editor):
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        shutil.rmtree(tmp_path / "lesson01", ignore_errors=True)


# --- Lesson 02: a Redis for the cache, without Docker ---------------------------------------------


def test_lesson_02s_redis_serves_and_leaves_no_file_behind(tmp_path):
    (block,) = [b for b in checked_blocks("02-research-agent.md") if "redis-server" in b]
    assert shutil.which("redis-server"), "make test installs redis-server"
    port = free_port()
    command = block.strip().replace("--port 6379", f"--port {port}")
    assert command != block.strip(), "the doc's command names no --port 6379"
    # The learner's checkout: wherever they run it, nothing may be written there.
    redis = subprocess.Popen(
        ["bash", "-c", f"exec {command}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def answers(*args: str) -> str:
            result = subprocess.run(
                ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10
            )
            return result.stdout.strip()

        wait_for(lambda: answers("ping") == "PONG", timeout=30, interval=0.2, what="redis-server")
        assert answers("set", "lesson02", "cached") == "OK"
        assert answers("config", "get", "appendonly").split() == ["appendonly", "no"]
    finally:
        redis.send_signal(signal.SIGINT)  # Ctrl+C, as the doc says
        redis.wait(timeout=30)
    assert list(tmp_path.iterdir()) == [], "redis-server left files in the folder it ran in"
