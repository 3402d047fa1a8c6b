"""Where a server's time goes, for the benchmarks' BENCH_PROFILE=1: py-spy attached to the running
process over one loop of the benchmark's requests, its flame graph kept as a picture, and its raw
stacks read into tables (the functions most often on top of the stack, a lesson's own code, and
the packages the samples were in). `make bench-mcp` profiles lesson 08's gateway with it, `make
bench-a2a` lesson 12's server.

py-spy is not in the locked environments: `uv pip install py-spy --python .venv/bin/python` (or
lesson 08's environment) adds it, and without it the profile is skipped, saying so."""

import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def py_spy(*pythons: str) -> str | None:
    """py-spy next to one of these interpreters, or next to this one."""
    for python in (*pythons, sys.executable):
        candidate = Path(python).parent / "py-spy"
        if candidate.exists():
            return str(candidate)
    return None


def frame_name(frame: str, own: str) -> tuple[str, bool, str]:
    """py-spy's raw frame "function (path/file.py:line)" as "function (file.py)", whether it is
    the lesson's own code (a path under `own`, e.g. "lesson08/") rather than a library's, and the
    package it is in. py-spy shortens a path to what follows its sys.path entry
    ("sqlalchemy/engine/base.py"); the standard library's modules count as one package."""
    function, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in file:
        file = file.rsplit("site-packages/", 1)[1]
    is_own = file.startswith(own) or f"/{own}" in file
    top = file.split("/", 1)[0].removesuffix(".py")
    package = own.rstrip("/") if is_own else top
    if top in sys.stdlib_module_names or file.startswith("/") or "<" in top or not top:
        package = "the standard library" if not is_own else package
    return (f"{function} ({Path(file).name})" if file else function), is_own, package


def top_costs(raw: str, own: str, top: int = 10) -> dict:
    """From py-spy's raw (collapsed) stacks: the samples, the functions most often on top of the
    stack (self: where the time went), the lesson's own functions most often in it (inclusive:
    what its code led to), each as (name, share of samples in it, share on top), and the packages
    the samples were on top in (name, share)."""
    inclusive, own_time, packages, total, ours = Counter(), Counter(), Counter(), 0, set()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame_name(f, own) for f in stack.split(";")[1:]]  # the first is the thread
        total += int(count)
        for name, is_own, _package in set(frames):
            inclusive[name] += int(count)
            if is_own:
                ours.add(name)
        if frames:
            own_time[frames[-1][0]] += int(count)
            packages[frames[-1][2]] += int(count)

    def row(name: str) -> tuple:
        return name, inclusive[name] / total, own_time[name] / total

    return {
        "total": total,
        "on_top": [row(name) for name, _ in own_time.most_common(top)],
        "own_code": sorted((row(name) for name in ours), key=lambda r: -r[1])[:top],
        "packages": [(name, n / total) for name, n in packages.most_common(top)],
    }


def record(pid: int, loop: Callable[[], object], svg: Path, spy: str) -> tuple[str, str]:
    """py-spy over `loop()` twice: once drawing the flame graph `svg`, once keeping the raw stacks;
    returns (raw stacks, an error or "")."""
    raw = Path(tempfile.mkstemp(prefix="py-spy-", suffix=".txt")[1])
    svg.parent.mkdir(parents=True, exist_ok=True)
    try:
        for output, form in ((svg, "flamegraph"), (raw, "raw")):
            command = [spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking"]
            command += ["--format", form, "-o", str(output)]
            recorder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                time.sleep(1)  # attached before the loop starts
                loop()
            finally:
                recorder.send_signal(2)  # SIGINT: py-spy writes its file and exits
                out, _ = recorder.communicate(timeout=120)
            if recorder.returncode or not output.stat().st_size:
                return "", f"py-spy failed ({recorder.returncode}): {out.decode()[-500:]}"
        # The graph's title holds py-spy's command line: the checkout's path goes.
        svg.write_text(svg.read_text(encoding="utf-8").replace(f"{ROOT}/", ""), encoding="utf-8")
        return raw.read_text(), ""
    finally:
        raw.unlink(missing_ok=True)


def tables(costs: dict, own_title: str) -> list[str]:
    """The profile's tables, as Markdown lines."""
    lines = []
    for title, rows in (
        ("where the samples were: on top of the stack (self)", costs["on_top"]),
        (own_title, costs["own_code"]),
    ):
        lines += [f"\n| {title} | in the stack | on top |", "| --- | ---: | ---: |"]
        for name, share, self_share in rows:
            # As code: a frame's name holds `__call__` and `<locals>`, which Markdown would read
            # as bold and as HTML.
            lines.append(f"| `{name.replace('|', '/')}` | {share:.0%} | {self_share:.0%} |")
    lines += ["\n| package (on top of the stack) | share of the samples |", "| --- | ---: |"]
    lines += [f"| {name} | {share:.0%} |" for name, share in costs["packages"]]
    return lines


def profile(
    pid: int,
    loop: Callable[[], object],
    svg: Path,
    spy: str,
    *,
    of: str,
    what: str,
    own: str,
    own_title: str,
) -> list[str]:
    """py-spy over `loop()` (record) read into the printed lines: a heading saying what was
    profiled (`of`: "the gateway") over what (`what`: "over 200 calls"), then the tables."""
    raw, error = record(pid, loop, svg, spy)
    if error:
        return [f"Profile: {error}"]
    costs = top_costs(raw, own=own)
    return [
        f"\nProfile of {of}: py-spy record --pid, 200 samples/s, --nonblocking, {what} (the "
        f"second of two such loops; the first drew {svg.relative_to(ROOT)}): {costs['total']} "
        f"samples of its busy time, idle ones left out",
        *tables(costs, own_title),
    ]
