"""Benchmark a learner's first minute (`make bench-first-answer`): a measurement, not a test.

For each installer (pip first, as the baseline, then uv), from nothing:
  git clone this repository (its committed HEAD) into a temporary folder,
  run `make lesson-01` there on a free port, with empty package caches (nothing downloaded before),
  and send the README's first request until it answers 200.
It prints, per installer, the seconds from the clone to that first answer and the part of them spent
creating .venv and installing the lock, with the ratio to pip. Everything it creates is deleted.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import deadline
from bench import results as bench_results
from support.ports import free_port  # standard library only: this runs before .venv exists

ROOT = Path(__file__).resolve().parents[1]
INSTALLERS = ["pip", "uv"]
TIMEOUT = 600  # seconds for one run, clone to answer
QUERY = {"query": "What is a container?"}


def answered(port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/invoke",
        data=json.dumps(QUERY).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200 and bool(json.load(response)["response"])
    except Exception:
        return False


def megabytes(folder: Path) -> float:
    """What the folder's files hold (apparent sizes, links not followed), in MB (10^6 bytes)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            total += os.lstat(os.path.join(parent, name)).st_size
    return total / 1e6


def first_answer(installer: str, workdir: Path) -> tuple[float, float, float]:
    """Seconds from `git clone` to the first answer, those spent installing .venv, and the size of
    the .venv `make lesson-01` made (MB)."""
    clone = workdir / f"clone-{installer}"
    port = free_port()
    # Empty caches, so both installers download everything; no app setting leaks in from the shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "VIRTUAL_ENV"))}
    env.update(
        INSTALLER=installer,
        PORT=str(port),
        UV_CACHE_DIR=str(workdir / f"uv-cache-{installer}"),
        PIP_NO_CACHE_DIR="1",
    )
    started = time.monotonic()
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    log_path = workdir / f"lesson-01-{installer}.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            ["make", "lesson-01"],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    installed_at = None
    try:
        while not answered(port):
            if installed_at is None and (clone / ".venv" / ".lesson01").exists():
                installed_at = time.monotonic()
            if server.poll() is not None or time.monotonic() - started > TIMEOUT:
                sys.exit(
                    f"{installer}: no answer (exit {server.returncode}):\n"
                    + log_path.read_text()[-3000:]
                )
            time.sleep(0.1)
        total = time.monotonic() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=60)
    return total, (installed_at or time.monotonic()) - started, megabytes(clone / ".venv")


def main() -> int:
    results_file = bench_results.start("first-answer", {"installers": INSTALLERS})
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-first-answer-") as tmp:
        for installer in INSTALLERS:
            results[installer] = first_answer(installer, Path(tmp))
            total, install, size = results[installer]
            print(f"{installer}: first answer after {total:.1f}s, .venv {size:.0f} MB", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    baseline = results["pip"][0]
    print(
        f"\n| installer | clone -> first answer s | of which .venv + lock s | x {INSTALLERS[0]} "
        "| .venv MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for installer, (total, install, size) in results.items():
        print(
            f"| {installer} | {total:.1f} | {install:.1f} | {total / baseline:.2f}x | {size:.0f} |"
        )
    results_file.write()
    return 0


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
