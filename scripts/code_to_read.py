"""Count the code a lesson's core path asks a learner to read: the lines it shows or links.

Usage: python -m scripts.code_to_read [FILE...]   (default: every lesson with a code-to-read table)

Counted above the `## Going further` heading:
- an `include` of a whole file, or a Markdown link to a code file, counts the file's lines;
- an `include` of a definition (`PATH#name`) counts the excerpt's lines;
- an `include-diff` counts its added lines (`+`), for the file on its new side;
- a file that is linked or included whole counts once, as the whole file.
Naming a file in backticks without a link is not a link. The core path states the result in one
table headed `| Code to read | Lines |`, a row a file and a `Total` row; a lesson built from steps
keeps the total at most LIMIT. Prints each lesson's rows as counted; exits 1 when a table says
something else or a total is over the limit.
"""

import argparse
import re
import sys
from pathlib import Path

from scripts import docs_words

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 300
INCLUDE = re.compile(r"^<!--\s*include(?P<diff>-diff)?:\s*(?P<specs>[^>]+?)\s*-->\s*$", re.M)
FENCE = re.compile(r"^(`{3,})[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
LINK = re.compile(r"\]\((?P<target>[^)\s#]+)(?:#[^)]*)?\)")
CODE_SUFFIXES = {".py", ".html", ".js", ".yaml", ".yml", ".cfg", ".conf", ".sql", ".sh", ".toml"}
TABLE_HEAD = re.compile(r"^\|\s*Code to read\s*\|\s*Lines\s*\|\s*$", re.M)
ROW = re.compile(r"^\|(?P<what>[^|]*)\|\s*(?:\*\*)?(?P<lines>\d+)(?:\*\*)?\s*\|\s*$")


def is_code(path: Path) -> bool:
    name = path.name
    return path.suffix in CODE_SUFFIXES or name.startswith("Dockerfile") or name == "Makefile"


def file_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def counted(doc: Path, root: Path = ROOT) -> dict[str, int]:
    """File (relative to the repository) -> the lines of it the core path shows or links."""
    core = docs_words.core_path(doc.read_text(encoding="utf-8"))
    whole: set[str] = set()
    shown: dict[str, int] = {}
    for match in INCLUDE.finditer(core):
        block = FENCE.search(core, match.end())
        body = block[2] if block and block.start() == match.end() + 1 else ""
        specs = match["specs"].split()
        if match["diff"]:
            path = specs[-1].split("#", 1)[0]
            added = [line for line in body.splitlines() if line.startswith("+")]
            added = [line for line in added if not line.startswith("+++")]
            shown[path] = shown.get(path, 0) + len(added)
        else:
            path, _, name = specs[0].partition("#")
            if name:
                shown[path] = shown.get(path, 0) + len(body.splitlines())
            else:
                whole.add(path)
    prose = docs_words.prose(core)
    for match in LINK.finditer(prose):
        target = (doc.parent / match["target"]).resolve()
        if target.is_file() and target.is_relative_to(root.resolve()) and is_code(target):
            whole.add(target.relative_to(root.resolve()).as_posix())
    lines = dict(shown)
    lines.update({path: file_lines(root / path) for path in whole if (root / path).is_file()})
    return lines


def stated(doc: Path) -> tuple[dict[str, int], int | None] | None:
    """The core path's table: file -> lines, and the Total row (None when there is no table)."""
    core = docs_words.core_path(doc.read_text(encoding="utf-8"))
    head = TABLE_HEAD.search(core)
    if not head:
        return None
    rows, total = {}, None
    for line in core[head.end() :].lstrip("\n").splitlines()[1:]:
        row = ROW.match(line)
        if not row:
            break
        what = row["what"]
        if "total" in what.lower():
            total = int(row["lines"])
        elif path := re.search(r"`([^`]+)`", what):
            rows[path[1]] = rows.get(path[1], 0) + int(row["lines"])
    return rows, total


def problems(doc: Path, root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    """What is wrong with a lesson's code-to-read table, compared with what its core path shows."""
    table = stated(doc)
    if table is None:
        return [f"{doc.name} has no '| Code to read | Lines |' table above '## Going further'"]
    rows, total = table
    found = counted(doc, root)
    wrong = [
        f"{path}: the table says {rows.get(path)}, the core path shows {found.get(path)}"
        for path in sorted(rows.keys() | found.keys())
        if rows.get(path) != found.get(path)
    ]
    if total != sum(rows.values()):
        wrong.append(f"the Total row says {total}, the rows add up to {sum(rows.values())}")
    if sum(found.values()) > limit:
        wrong.append(f"{sum(found.values())} lines of code to read, the limit is {limit}")
    return wrong


def tabled_lessons(root: Path = ROOT) -> list[Path]:
    """The lessons whose core path has a code-to-read table, or that are built from steps."""
    return [
        doc
        for doc in docs_words.lessons(root)
        if stated(doc) is not None or any((root / "code").glob(f"{doc.name[:2]}_step[0-9]_*.py"))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for doc in args.files or tabled_lessons():
        found = counted(doc)
        print(f"{doc.name}: {sum(found.values())} lines of code to read (limit {LIMIT})")
        for path, lines in found.items():
            print(f"  | `{path}` | {lines} |")
        for problem in problems(doc):
            failed = True
            print(f"  ! {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
