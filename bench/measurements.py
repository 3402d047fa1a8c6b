"""`make measurements`: the tables of docs/measurements.md, from the benchmarks' JSON files.

Every `make bench-*` target writes bench-results/<name>.json (bench/results.py owns its
keys). This prints each one in Markdown, in the shape docs/measurements.md uses: a line that says
when, with which command and on what machine, then what the benchmark printed (its tables as
tables, its notes as text blocks), between the markers that place it in the page:

    <!-- bench: api -->
    ...
    <!-- /bench: api -->

Usage: python -m bench.measurements [NAME ...] [--write] [--doc docs/measurements.md]

--write replaces what is between each pair of markers in the page with the result of that name,
and leaves everything else in the page as it was: a result without markers is not added.
"""

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

from bench.results import RESULTS_DIR, ROOT

DOC = ROOT / "docs" / "measurements.md"
# The order of the page; results of other names follow, by name.
ORDER = [
    "api",
    "first-answer",
    "sse-proxy",
    "images",
    "start",
    "start-host",
    "sandbox",
    "variations",
    "scaleout",
]


def load(directory: Path, names: list[str]) -> dict[str, dict]:
    found = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in directory.glob("*.json")}
    missing = [n for n in names if n not in found]
    if missing:
        sys.exit(f"no results for {', '.join(missing)} in {directory}: run make bench-<name> first")
    chosen = names or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    return {name: found[name] for name in chosen}


def machine_text(m: dict) -> str:
    cpu = f"{m['cores']} CPUs" + (f" ({m['cpu_model']})" if m.get("cpu_model") else "")
    parts = [f"{m['os']} {m['arch']}", cpu]
    if m.get("memory_gib"):
        parts.append(f"{m['memory_gib']:g} GiB of RAM")
    parts.append(f"Python {m['python']}")
    if m.get("docker"):
        d = m["docker"]
        parts.append(
            f"Docker {d['server_version']} ({d['storage_driver']}, cgroup v{d['cgroup_version']})"
        )
    start, end = m["load_average_start"][0], m["load_average_end"][0]
    parts.append(f"load average {start:.1f} at the start, {end:.1f} at the end")
    return ", ".join(parts)


def header(result: dict) -> str:
    date = datetime.fromisoformat(result["date"])
    settings = ", ".join(
        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["settings"].items()
    )
    return (
        f"Measured on {date:%Y-%m-%d} at {date:%H:%M} UTC with `{result['command']}`"
        + (f" ({settings})" if settings else "")
        + f", in {result['seconds']:g} s, on {machine_text(result['machine'])}:"
    )


def blocks(report: str) -> list[str]:
    """The printed report as Markdown: tables as they are, the other lines in ```text blocks."""
    out, table, text = [], [], []

    def flush() -> None:
        if table:
            out.append("\n".join(table))
            table.clear()
        while text and not text[-1].strip():
            text.pop()
        if text:
            out.append("```text\n" + "\n".join(text) + "\n```")
            text.clear()

    for line in report.splitlines():
        is_row = line.lstrip().startswith("|")
        if is_row != bool(table) and (table or text):
            flush()
        if is_row:
            table.append(line.strip())
        elif text or line.strip():
            text.append(line)
    flush()
    return out


def render(name: str, result: dict) -> str:
    body = "\n\n".join([header(result), *blocks(result["table_markdown"])])
    return f"<!-- bench: {name} -->\n\n{body}\n\n<!-- /bench: {name} -->"


def write(doc: Path, rendered: dict[str, str]) -> list[str]:
    """Replace each marked block of `doc` that has a result; returns the names replaced."""
    text, replaced = doc.read_text(encoding="utf-8"), []
    for name, block in rendered.items():
        pattern = re.compile(
            rf"^<!-- bench: {re.escape(name)} -->\n.*?^<!-- /bench: {re.escape(name)} -->$",
            re.M | re.S,
        )
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + block + text[found.end() :]
            replaced.append(name)
    opened = set(re.findall(r"^<!-- bench: (\S+) -->$", text, re.M))
    closed = set(re.findall(r"^<!-- /bench: (\S+) -->$", text, re.M))
    if opened != closed:
        sys.exit(f"{doc}: markers without their pair: {', '.join(sorted(opened ^ closed))}")
    doc.write_text(text, encoding="utf-8")
    return replaced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="results to show (default: all)")
    parser.add_argument("--write", action="store_true", help="replace the marked blocks in --doc")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    results = load(args.results, args.names)
    if not results:
        print(f"No results in {args.results}: every `make bench-*` target writes one there.")
        return 0
    rendered = {name: render(name, result) for name, result in results.items()}
    if not args.write:
        print("\n\n".join(rendered.values()))
        return 0
    replaced = write(args.doc, rendered)
    left = [name for name in rendered if name not in replaced]
    print(f"{args.doc}: replaced {', '.join(replaced) or 'nothing'}")
    if left:
        print(f"No <!-- bench: NAME --> markers for: {', '.join(left)} (not added)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
