"""Benchmark the three Dockerfiles (`make bench-images`): a measurement, not a test.

For each variant, from a private copy of the build context (your files are never touched):
  cold build      after `docker builder prune -af` (no layer cache, no cache mounts; base images
                  stay)
  deps step       of that build, the RUN that installs requirements.txt (pip, or uv for optimized)
  code rebuild    after appending a comment to app/__init__.py: what a code-only change costs
  size            of the image
  start->ready    `docker run` until GET /ready answers 200 from the host (median of RUNS)
  start->healthy  `docker run` until Docker's health status is `healthy` (the first check runs one
                  --interval, 5 s, after the start: engines before 25 have no --start-interval)
and the same app on the host (`.venv`, uvicorn) for comparison. Images are tagged
research-agent-bench:* and removed afterwards. It empties BuildKit's cache, so the next
`make build` starts cold.

`--start-only` (`make bench-start`) builds nothing and prunes nothing: it times the starts of the
images `make build` made (research-agent:*, with TAG_SUFFIX), plus the optimized image once more
with its build-time byte-code ignored (PYTHONPYCACHEPREFIX pointing at an empty folder): what
that step of Dockerfile.optimized buys.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "research-agent"
VARIANTS = {
    "basic": "Dockerfile",
    "multistage": "Dockerfile.multistage",
    "optimized": "Dockerfile.optimized",
}
RUN_OPTIONS = {"optimized": ["--read-only", "--tmpfs", "/tmp"]}
CONTEXT = ["app", "main.py", "notes", "requirements.txt", ".dockerignore", *VARIANTS.values()]
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
TIMEOUT = 120


def sh(*args: str, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ready", timeout=1) as response:
            return response.status == 200
    except Exception:
        return False


def build(context: Path, dockerfile: str, tag: str) -> tuple[float, float | None]:
    """Seconds for the whole build, and for the step that installs the lock."""
    started = time.monotonic()
    log = sh(
        "docker",
        "build",
        "--progress=plain",
        "-f",
        str(context / dockerfile),
        "-t",
        tag,
        str(context),
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    ).stderr
    total = time.monotonic() - started
    steps = dict(
        re.findall(r"^#(\d+) \[[^\]]*\] RUN (.*)$", log, re.M)[::-1]
    )  # first line of each step
    deps = [n for n, line in steps.items() if "requirements.txt" in line and "install" in line]
    seconds = [float(s) for n in deps for s in re.findall(rf"^#{n} DONE ([\d.]+)s$", log, re.M)]
    return total, (max(seconds) if seconds else None)


def container_start(tag: str, options: list[str]) -> tuple[float, float]:
    """Seconds from `docker run` to /ready 200 (host side) and to Docker's `healthy`."""
    started = time.monotonic()
    cid = sh("docker", "run", "-d", "-p", "127.0.0.1::8000", *options, tag).stdout.strip()
    try:
        port = sh("docker", "port", cid, "8000/tcp").stdout.split()[0].rpartition(":")[2]
        url, to_ready, to_healthy = f"http://127.0.0.1:{port}", None, None
        while time.monotonic() - started < TIMEOUT and to_healthy is None:
            if to_ready is None and ready(url):
                to_ready = time.monotonic() - started
            if to_ready is not None:
                status = sh(
                    "docker", "inspect", "-f", "{{.State.Health.Status}}", cid
                ).stdout.strip()
                if status == "healthy":
                    to_healthy = time.monotonic() - started
            time.sleep(0.05)
        if to_healthy is None:
            raise RuntimeError(
                f"{tag} not healthy after {TIMEOUT}s:\n{sh('docker', 'logs', cid).stdout[-2000:]}"
            )
        return to_ready, to_healthy
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


def host_start() -> float:
    """Seconds from starting uvicorn on the host to /ready 200 (notes/ only, as in the images)."""
    python = ROOT / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory() as no_docs:
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # Byte-code cached as a learner's .venv has it after the first run (see warm-up in main).
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["DOCS_DIR"] = no_docs
        started = time.monotonic()
        process = subprocess.Popen(
            [str(python), "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=AGENT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while not ready(f"http://127.0.0.1:{port}"):
                if time.monotonic() - started > TIMEOUT or process.poll() is not None:
                    raise RuntimeError("the app did not become ready on the host")
                time.sleep(0.05)
            return time.monotonic() - started
        finally:
            process.terminate()
            process.wait(30)


def start_only() -> int:
    suffix = os.environ.get("TAG_SUFFIX", "")
    runs = [
        (variant, f"research-agent:{variant}{suffix}", RUN_OPTIONS.get(variant, []))
        for variant in VARIANTS
    ]
    no_pyc = ["-e", "PYTHONPYCACHEPREFIX=/nonexistent"]
    runs.append(("optimized, byte-code ignored", runs[-1][1], [*runs[-1][2], *no_pyc]))
    rows = []
    for name, tag, options in runs:
        print(f"==> {name}: {RUNS} starts of {tag}", flush=True)
        starts = [container_start(tag, options) for _ in range(RUNS)]
        rows.append(
            (name, statistics.median(r for r, _ in starts), statistics.median(h for _, h in starts))
        )
    print(f"==> host: a warm-up, then {RUNS} starts of uvicorn main:app from .venv", flush=True)
    host_start()
    host = statistics.median(host_start() for _ in range(RUNS))
    print("\n| image | start->ready s (x host) | start->healthy s |")
    print("| --- | ---: | ---: |")
    for name, to_ready, to_healthy in rows:
        print(f"| {name} | {to_ready:.2f} ({to_ready / host:.2f}x) | {to_healthy:.1f} |")
    print(f"| host (.venv) | {host:.2f} (1.00x) | |")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--start-only"]:
        return start_only()
    variants = sys.argv[1:] or list(VARIANTS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        for name in CONTEXT:
            source = AGENT / name
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, context / name)
        for variant in variants:
            tag = f"research-agent-bench:{variant}"
            print(f"==> {variant}: cold build (build cache pruned)", flush=True)
            sh("docker", "builder", "prune", "-af")
            cold, deps = build(context, VARIANTS[variant], tag)
            cold_id = sh("docker", "image", "inspect", tag, "--format", "{{.Id}}").stdout.strip()
            with open(context / "app" / "__init__.py", "a") as f:
                f.write(f"# bench {time.time()}\n")
            print(f"==> {variant}: code-only rebuild", flush=True)
            code, _ = build(context, VARIANTS[variant], tag)
            size = int(sh("docker", "image", "inspect", tag, "--format", "{{.Size}}").stdout)
            print(f"==> {variant}: {RUNS} starts", flush=True)
            starts = [container_start(tag, RUN_OPTIONS.get(variant, [])) for _ in range(RUNS)]
            rows.append(
                (
                    variant,
                    cold,
                    deps,
                    code,
                    size,
                    statistics.median(r for r, _ in starts),
                    statistics.median(h for _, h in starts),
                )
            )
            sh("docker", "rmi", tag, cold_id)  # the cold build's image is untagged by the rebuild
    print(f"==> host: {RUNS} starts of uvicorn main:app from .venv", flush=True)
    host = statistics.median(host_start() for _ in range(RUNS))

    print()
    print(
        "| variant | cold build s | deps step s | code-only rebuild s (% of cold) | size MB"
        " | start->ready s (x host) | start->healthy s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for variant, cold, deps, code, size, to_ready, to_healthy in rows:
        deps_s = f"{deps:.1f}" if deps is not None else "?"
        print(
            f"| {variant} | {cold:.1f} | {deps_s} | {code:.1f} ({100 * code / cold:.1f}%)"
            f" | {size / 1e6:.0f} | "
            f"{to_ready:.2f} ({to_ready / host:.2f}x) | {to_healthy:.1f} |"
        )
    print(f"| host (.venv) | | | | | {host:.2f} (1.00x) | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
