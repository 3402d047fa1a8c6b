"""What every `make bench-*` target shares: its results as JSON, `bench-results/<name>.json`
(git-ignored), the arithmetic of its figures (percentile, to_ms), and its tables (print_table).

A benchmark calls `start(name, settings)` first, which notes the time, the load average and the
commit and begins copying what the benchmark prints, and `write()` at the end, which adds the
machine's facts and the tables it printed, and writes the file. The tables are read back from
the printed Markdown, so the file holds exactly the figures the benchmark showed.
bench/measurements.py turns the files into the tables of docs/measurements.md. Standard library
only: `make bench-first-answer` runs it with the system's Python.

The keys (version 1; docs/measurements.md lists them too):

    schema            1: the version of these keys
    name              the benchmark: api, first-answer, sse-proxy, images, start, start-host,
                      sandbox, variations, scaleout
    command           what was run: `make bench-api` (the Makefile sets BENCH_COMMAND), else
                      `python -m bench.api ...` as typed
    date              when it started, ISO 8601 in UTC: 2026-11-22T05:08:13Z
    seconds           how long it ran, start() to write()
    commit            the checkout's `git rev-parse HEAD`, with "-dirty" when files were changed
    settings          the benchmark's own knobs and their values (BENCH_SECONDS, --runs...)
    machine           the machine, without its name:
      os, arch          platform.system() and platform.release(); platform.machine()
      cpu_model         from /proc/cpuinfo, null elsewhere
      cores             os.cpu_count()
      memory_gib        total memory, null where the system does not say
      python            the interpreter's version
      load_average_start, load_average_end
                        os.getloadavg() at start() and at write(): 1, 5 and 15 minutes
      docker            null when no Docker engine answers, else:
        server_version, storage_driver, cgroup_version   from `docker info`
    tables            each Markdown table printed, in order: {"columns": [...], "rows": [{...}]},
                      a row keyed by the column headers (a repeated header gets " #2", " #3"); a
                      cell that is a number, or a number followed by x, × or %, is a JSON number
                      (the header says what it is), an empty cell is null, any other cell is the
                      string printed. A column whose every cell is a number and the same unit
                      ("60 ms") holds the numbers, and its key ends with the unit
                      ("first token (median) ms")
    table_markdown    what the benchmark printed from its first table row to its end, verbatim:
                      tables and the notes after them (verdicts, failures)
    output            everything the benchmark printed to stdout, progress lines included
"""

import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench-results"
SCHEMA = 1
NUMBER = re.compile(r"^(?P<number>[-+]?\d+(?:\.\d+)?)(?:x|×|%)?$")
WITH_UNIT = re.compile(r"^([-+]?\d+(?:\.\d+)?) ([A-Za-z]+)$")


class _Tee:
    """Stands in for sys.stdout: passes everything through and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def __getattr__(self, name):
        return getattr(self.stream, name)


class Run:
    """One run of a benchmark, from start() to write()."""

    def __init__(self, name: str, settings: dict | None = None):
        self.name, self.settings = name, dict(settings or {})
        self.started_at = datetime.now(UTC)
        self.started = time.monotonic()
        self.load_start = os.getloadavg()
        self.commit = git_commit()
        self.command = os.environ.get("BENCH_COMMAND") or command_typed()
        self.tee = _Tee(sys.stdout)
        sys.stdout = self.tee

    def write(self, directory: Path | None = None) -> Path:
        """Stop copying stdout and write <directory>/<name>.json (bench-results/ by default)."""
        if sys.stdout is self.tee:
            sys.stdout = self.tee.stream
        output = "".join(self.tee.parts)
        record = {
            "schema": SCHEMA,
            "name": self.name,
            "command": self.command,
            "date": self.started_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "seconds": round(time.monotonic() - self.started, 1),
            "commit": self.commit,
            "settings": self.settings,
            "machine": machine(self.load_start),
            "tables": parse_tables(output),
            "table_markdown": report_text(output),
            "output": output,
        }
        directory = directory or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}.json"
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        print(f"\nResults written to {where} (python -m bench.measurements shows them)")
        return path


def percentile(values, p: float) -> float:
    """The p-th percentile (0 to 100) of the values, interpolated between the two nearest ones
    (statistics.quantiles' "inclusive" method); one value is every percentile, none is nan."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * p / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def to_ms(value: str) -> float:
    """A duration as wrk prints it ("850.12us", "3.5ms", "1.20s") in milliseconds."""
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000}[unit]


def start(name: str, settings: dict | None = None) -> Run:
    """Call first: the load average and the date are the ones at the start of the benchmark."""
    return Run(name, settings)


def command_typed() -> str:
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None)
    if module:  # run as `python -m bench.api`
        return shlex.join(["python", "-m", module, *sys.argv[1:]])
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine(load_start: tuple[float, float, float]) -> dict:
    return {
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib(),
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "docker": docker_facts(),
    }


def cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return match.group(1).strip() if match else None


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def docker_facts() -> dict | None:
    try:
        result = subprocess.run(
            ["docker", "info", "--format", "{{json .}}"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info = json.loads(result.stdout) if result.returncode == 0 else {}
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    if not info.get("ServerVersion"):
        return None  # the CLI answered, the engine did not
    return {
        "server_version": info["ServerVersion"],
        "storage_driver": info.get("Driver"),
        "cgroup_version": info.get("CgroupVersion"),
    }


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table of figures, printed: the first column is a name, left-aligned, and the
    others are numbers, right-aligned. The cells are printed as given."""
    print("| " + " | ".join(header) + " |")
    print("| --- |" + " ---: |" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


# --- Reading the printed tables back --------------------------------------------------------------


def cells(line: str) -> list[str]:
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", inner)]


def value(cell: str) -> int | float | str | None:
    if not cell:
        return None
    match = NUMBER.match(cell)
    if not match:
        return cell
    number = match.group("number")
    return float(number) if "." in number else int(number)


def unique(columns: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    named = []
    for column in columns:
        seen[column] = seen.get(column, 0) + 1
        named.append(column if seen[column] == 1 else f"{column} #{seen[column]}")
    return named


def parse_tables(text: str) -> list[dict]:
    """Every Markdown table in `text` (a header row, a --- row, rows) as columns and rows."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        separator = len(block) >= 2 and all(re.fullmatch(r":?-+:?", c) for c in cells(block[1]))
        if separator:
            tables.append(table(cells(block[0]), [cells(row) for row in block[2:]]))
        block = []
    return tables


def table(header: list[str], body: list[list[str]]) -> dict:
    columns = []
    for i, name in enumerate(header):
        # A column whose every cell reads "60 ms" holds numbers: the unit moves to its name.
        column = [row[i] for row in body if i < len(row) and row[i]]
        units = {m.group(2) if m else None for m in (WITH_UNIT.match(c) for c in column)}
        if len(units) == 1 and None not in units:
            columns.append(f"{name} {units.pop()}")
            for row in body:
                if i < len(row) and row[i]:
                    row[i] = WITH_UNIT.match(row[i]).group(1)
        else:
            columns.append(name)
    columns = unique(columns)
    rows = [dict(zip(columns, map(value, row), strict=False)) for row in body]
    return {"columns": columns, "rows": rows}


def report_text(text: str) -> str:
    """From the first table row to the end: the part of the output that goes into the docs."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), len(lines))
    return "\n".join(lines[first:]).strip() + "\n" if first < len(lines) else ""
