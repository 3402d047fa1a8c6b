"""Benchmark the three Dockerfiles (`make bench-images`): a measurement, not a test.

For each variant, from a private copy of the build context (your files are never touched):
  cold build      after `docker builder prune -af` (no layer cache, no cache mounts; base images
                  stay)
  deps step       of that build, the RUN that installs requirements.txt (pip, or uv for optimized)
  code rebuild    after appending a comment to research_agent/__init__.py: what a code-only
                  change costs
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

`--vs-host [IMAGE...]` (`make bench-start-host`) compares images (default: research-agent:optimized
with TAG_SUFFIX) with `python main.py` on the host, alternating them, and splits the difference:
  start->ready    `python main.py` / `docker run` until GET /ready answers 200
  first, second   seconds of the first and second POST /v1/research after ready (offline, local
                  search, no token delay): what deferred imports would move onto the first request
  import main     seconds to import the server module (in the container for the image), the CPU
                  seconds of it (wall well above CPU: waiting for the disk or a core), and the
                  number of modules then loaded
  bare python     `python -c pass` on the host, `docker run` of it for the image: the container's
                  own cost, before any of our code runs
and `python -X importtime -c "import main"` once on each side, summed by top-level package.
"""

import collections
import json
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

from bench import deadline
from bench import results as bench_results
from support.lessons import dockerignore_allow_list
from support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
AGENT = ROOT / "research-agent"
VARIANTS = {
    "basic": "Dockerfile",
    "multistage": "Dockerfile.multistage",
    "optimized": "Dockerfile.optimized",
}
RUN_OPTIONS = {"optimized": ["--read-only", "--tmpfs", "/tmp"]}
# What `docker build` sends: what the .dockerignore lets in, and the files that build it.
CONTEXT = [*dockerignore_allow_list(AGENT), ".dockerignore", *VARIANTS.values()]
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
        port = free_port()
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
    results_file = bench_results.start("start", {"BENCH_RUNS": RUNS, "TAG_SUFFIX": suffix})
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
    results_file.write()
    return 0


# --- --vs-host: the optimized image against the host, and where the difference goes -------------

QUESTION = json.dumps({"query": "How do I make a container image smaller?"}).encode()
APP_ENV = {"OFFLINE_TOKEN_DELAY_MS": "0"}  # time the work, not the offline model's pacing
# Wall and CPU seconds of the import: wall well above CPU is waiting, for the disk or for a core.
IMPORT_MAIN = (
    "import sys, time; t, c = time.perf_counter(), time.process_time(); import main;"
    " print(time.perf_counter() - t, time.process_time() - c, len(sys.modules))"
)


def post_seconds(url: str) -> float:
    request = urllib.request.Request(
        f"{url}/v1/research", QUESTION, {"Content-Type": "application/json"}
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        response.read()
    return time.monotonic() - started


def wait_ready(url: str, started: float, alive) -> float:
    while not ready(url):
        if time.monotonic() - started > TIMEOUT or not alive():
            raise RuntimeError(f"{url} did not become ready")
        time.sleep(0.02)
    return time.monotonic() - started


def host_env(no_docs: str, **extra: str) -> dict:
    # Byte-code cached as a learner's .venv has it after the first run (a warm-up start first).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **APP_ENV, "DOCS_DIR": no_docs, **extra}  # notes/ only, as in the images


def host_run(no_docs: str) -> tuple[float, float, float]:
    """`python main.py` on the host: seconds to ready, then of the first and second request."""
    port = free_port()
    env = host_env(no_docs, HOST="127.0.0.1", PORT=str(port))
    started = time.monotonic()
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "python"), "main.py"],
        cwd=AGENT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        to_ready = wait_ready(url, started, lambda: process.poll() is None)
        return to_ready, post_seconds(url), post_seconds(url)
    finally:
        process.terminate()
        process.wait(30)


def image_run(tag: str) -> tuple[float, float, float]:
    """`docker run` of the image: seconds to ready, then of the first and second request."""
    env = [arg for k, v in APP_ENV.items() for arg in ("-e", f"{k}={v}")]
    started = time.monotonic()
    cid = sh(
        "docker", "run", "-d", "-p", "127.0.0.1::8000", *RUN_OPTIONS["optimized"], *env, tag
    ).stdout.strip()
    try:
        port = sh("docker", "port", cid, "8000/tcp").stdout.split()[0].rpartition(":")[2]
        url = f"http://127.0.0.1:{port}"
        to_ready = wait_ready(url, started, lambda: True)
        return to_ready, post_seconds(url), post_seconds(url)
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


def in_image(tag: str, *command: str) -> subprocess.CompletedProcess:
    return sh("docker", "run", "--rm", *RUN_OPTIONS["optimized"], tag, *command, timeout=TIMEOUT)


def timed(run) -> float:
    started = time.monotonic()
    run()
    return time.monotonic() - started


# `python -v` says where each module's code came from: its byte-code, or its source, compiled now
# (and, on a read-only file system, again at every start).
VERBOSE = ["-v", "-c", "import main"]


def compiled_at_start(verbose: str) -> int:
    """How many modules `python -v` compiled from source (`# code object from /path.py`)."""
    return len(re.findall(r"^# code object from [^'\n]+\.py$", verbose, re.M))


def by_package(importtime: str) -> collections.Counter:
    """`-X importtime` output summed by top-level package: self time in ms."""
    totals = collections.Counter()
    for us, name in re.findall(r"^import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", importtime, re.M):
        totals[name.split(".")[0]] += int(us) / 1000
    return totals


def vs_host(tags: list[str]) -> int:
    """Each host start is followed by one of each image, so a busy machine slows all alike."""
    tags = tags or [f"research-agent:optimized{os.environ.get('TAG_SUFFIX', '')}"]
    results_file = bench_results.start("start-host", {"BENCH_RUNS": RUNS, "images": " ".join(tags)})
    python = str(ROOT / ".venv" / "bin" / "python")
    importtime = ["-X", "importtime", "-c", "import main"]
    loads = {}

    def seconds(out: str) -> tuple[float, float, int]:
        wall, cpu, modules = out.split()[-3:]
        return float(wall), float(cpu), int(modules)

    with tempfile.TemporaryDirectory() as no_docs:
        host_run(no_docs)  # warm-up: byte-code and the page cache, as a second start has them
        print(f"==> {RUNS} starts each of `python main.py` and {', '.join(tags)}", flush=True)
        loads["starts"] = os.getloadavg()[0]
        starts = {"host": [], **{tag: [] for tag in tags}}
        for _ in range(RUNS):
            starts["host"].append(host_run(no_docs))
            for tag in tags:
                starts[tag].append(image_run(tag))
        print(f"==> {RUNS} times each: import main, and a bare python", flush=True)
        loads["parts"] = os.getloadavg()[0]
        imports = {name: [] for name in starts}
        bare = {name: [] for name in starts}
        for _ in range(RUNS):
            out = sh(python, "-c", IMPORT_MAIN, cwd=AGENT, env=host_env(no_docs)).stdout
            imports["host"].append(seconds(out))
            bare["host"].append(timed(lambda: sh(python, "-c", "pass")))
            for tag in tags:
                imports[tag].append(seconds(in_image(tag, "python", "-c", IMPORT_MAIN).stdout))
                bare[tag].append(timed(lambda tag=tag: in_image(tag, "python", "-c", "pass")))
        print("==> python -X importtime -c 'import main', and python -v, once each", flush=True)
        packages = {
            "host": by_package(sh(python, *importtime, cwd=AGENT, env=host_env(no_docs)).stderr)
        }
        compiled = {
            "host": compiled_at_start(sh(python, *VERBOSE, cwd=AGENT, env=host_env(no_docs)).stderr)
        }
        for tag in tags:
            packages[tag] = by_package(in_image(tag, "python", *importtime).stderr)
            compiled[tag] = compiled_at_start(in_image(tag, "python", *VERBOSE).stderr)
        loads["end"] = os.getloadavg()[0]

    med = statistics.median
    ready_s = {name: med(r[0] for r in runs) for name, runs in starts.items()}
    wall = {name: med(r[0] for r in runs) for name, runs in imports.items()}
    print(
        f"\nMedians of {RUNS}; load average (1 min) {loads['starts']:.1f} at the starts,"
        f" {loads['parts']:.1f} at the parts, {loads['end']:.1f} at the end.\n"
    )
    print(
        "| where | start->ready s | x host | first request s | second request s"
        " | import main s | its CPU s | modules loaded | compiled | bare python s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, runs in starts.items():
        print(
            f"| {'host: python main.py' if name == 'host' else name} | {ready_s[name]:.2f}"
            f" | {ready_s[name] / ready_s['host']:.2f}"
            f" | {med(r[1] for r in runs):.2f} | {med(r[2] for r in runs):.2f}"
            f" | {wall[name]:.2f} | {med(r[1] for r in imports[name]):.2f}"
            f" | {imports[name][-1][2]} | {compiled[name]}"
            f" | {med(bare[name]):.2f} |"
        )
    print()
    for tag in tags:
        print(
            f"{tag} is {ready_s[tag] - ready_s['host']:+.2f} s from the host:"
            f" imports {wall[tag] - wall['host']:+.2f} s,"
            f" container start (bare python) {med(bare[tag]) - med(bare['host']):+.2f} s."
        )
    print()
    top = sorted(
        {p for counts in packages.values() for p in counts},
        key=lambda p: -sum(counts[p] for counts in packages.values()),
    )
    print(f"| package (-X importtime, self ms summed) | {' | '.join(packages)} |")
    print(f"| --- |{' ---: |' * len(packages)}")
    for package in top[:12]:
        print(f"| {package} | {' | '.join(f'{c[package]:.0f}' for c in packages.values())} |")
    print(f"| all | {' | '.join(f'{sum(c.values()):.0f}' for c in packages.values())} |")
    results_file.write()
    return 0


def main() -> int:
    if sys.argv[1:] == ["--start-only"]:
        return start_only()
    if sys.argv[1:2] == ["--vs-host"]:
        return vs_host(sys.argv[2:])
    variants = sys.argv[1:] or list(VARIANTS)
    results_file = bench_results.start("images", {"BENCH_RUNS": RUNS, "variants": variants})
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
            with open(context / "research_agent" / "__init__.py", "a") as f:
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
    results_file.write()
    return 0


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
