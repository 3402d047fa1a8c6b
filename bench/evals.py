"""`make bench-evals`: how long lesson 11's gate takes, and where the time goes.

Runs `python -m lesson11` (what `make evals` runs: offline, each case once, spans kept in
memory) as a fresh process, BENCH_ROUNDS times (default 3), and as baseline in the same rounds the
same command with one case only (`--case api-query-blank`, refused by the API before the agent
runs): the start of the suite (Python, LangChain and the apps of the three environments) with
almost nothing evaluated. Each round runs both, in turn, so a busy machine slows them alike.
Prints the wall-clock and CPU seconds (the process's user and system time) of each, their
medians, and the whole suite's ratio to the start. The issue's bound: the whole suite in 60 s.
"""

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import deadline
from bench import results as bench_results
from support.server import offline_environment

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(os.getenv("BENCH_ROUNDS", "3"))
BOUND_SECONDS = 60.0
RUNS = {
    "the start: one case refused by the API": ["--case", "api-query-blank"],
    "make evals: the whole dataset": [],
}


def timed(arguments: list[str], report: Path) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, its summary line) of one `python -m lesson11` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lesson11", "--quiet", "--report", str(report), *arguments],
        cwd=ROOT,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0:
        sys.exit(f"python -m lesson11 {' '.join(arguments)} failed:\n{done.stdout}{done.stderr}")
    return wall, cpu, lines[-1] if lines else ""


def main() -> None:
    run = bench_results.start("evals", {"BENCH_ROUNDS": ROUNDS})
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNS}
    summary = ""
    with tempfile.TemporaryDirectory() as report:
        for round_number in range(1, ROUNDS + 1):
            for name, arguments in RUNS.items():
                wall, cpu, line = timed(arguments, Path(report))
                measured[name].append((wall, cpu))
                summary = line if not arguments else summary
                print(f"round {round_number}: {name}: {wall:.1f} s, {cpu:.1f} s of CPU", flush=True)
    print(f"\nThe whole dataset's own summary line (last round): {summary}\n")
    start_wall = statistics.median(w for w, _ in measured[next(iter(RUNS))])
    rows = []
    for name, values in measured.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        rows.append(
            [
                name,
                f"{wall:.1f} s",
                f"{min(w for w, _ in values):.1f} s",
                f"{max(w for w, _ in values):.1f} s",
                f"{cpu:.1f} s",
                f"{wall / start_wall:.2f}x",
            ]
        )
    header = ["run", "wall (median)", "wall (min)", "wall (max)", "CPU (median)", "vs the start"]
    bench_results.print_table(header, rows)
    whole = statistics.median(w for w, _ in measured["make evals: the whole dataset"])
    verdict = "within" if whole <= BOUND_SECONDS else "OVER"
    print(
        f"\nmake evals: {whole:.1f} s (median of {ROUNDS}), {verdict} the {BOUND_SECONDS:g} s bound"
    )
    run.write()


if __name__ == "__main__":
    deadline.main_exit(main)  # SIGTERM/Ctrl+C: its cleanup runs first
