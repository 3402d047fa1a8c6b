"""Count the words of each lesson's core path: the prose above its `## Going further` heading.

Usage: python scripts/docs_words.py [--limit N] [FILE...]   (default: docs/NN-*.md)

The limit is 1,200 words for every lesson, whether or not it is built from steps
(`code/NN_stepK_*.py`). `--limit N` sets another limit for one run.

Prose is what a learner reads as text, and a table is read like prose: every word of its cells
counts (its `| --- |` row has none). Not counted: fenced code blocks, HTML comments (the include and
expected-output markers) and `<details>` blocks (folded solutions). A lesson without a
`## Going further` heading is all core path. Exits 1 when any lesson is over the limit, so
`make test` fails on a core path that grew too long.
"""

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1200
# A lesson built from steps (code/NN_stepK_*.py) has the same limit as any other.
STEPPED_LIMIT = LIMIT
LESSON_GLOB = "[0-9][0-9]-*.md"  # docs/01-agent-api.md ... and whatever lesson comes next
GOING_FURTHER = re.compile(r"^## Going further\s*$", re.MULTILINE)
WORD = re.compile(r"[\w'’`.-]*\w[\w'’`.-]*")


def lessons(root: Path = ROOT) -> list[Path]:
    """Every lesson doc, in course order."""
    return sorted((root / "docs").glob(LESSON_GLOB))


def limit_for(doc: Path, root: Path = ROOT) -> int:
    """The core path's word limit of docs/NN-*.md (a lesson built from steps has the same)."""
    stepped = any((root / "code").glob(f"{doc.name[:2]}_step[0-9]_*.py"))
    return STEPPED_LIMIT if stepped else LIMIT


def core_path(text: str) -> str:
    match = GOING_FURTHER.search(text)
    return text[: match.start()] if match else text


def prose(markdown: str) -> str:
    text = re.sub(r"<!--.*?-->", "", markdown, flags=re.DOTALL)
    text = re.sub(r"<details>.*?</details>", "", text, flags=re.DOTALL | re.IGNORECASE)
    kept, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if fence:
            if marker and stripped.startswith(fence):
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            continue
        kept.append(line)
    return "\n".join(kept)


def count_words(markdown: str) -> int:
    # Link targets are not read: keep a link's text, drop its (url).
    text = re.sub(r"\]\([^)]*\)", "]", prose(markdown))
    return len(WORD.findall(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, help="one limit for every file (default: per lesson)")
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    files = args.files or lessons()
    over = []
    print(f"{'lesson':<34} {'core-path words':>15}  {'limit':>5}")
    for path in files:
        text = path.read_text(encoding="utf-8")
        words, limit = count_words(core_path(text)), args.limit or limit_for(path)
        flag = "" if words <= limit else "  OVER"
        has_heading = "" if GOING_FURTHER.search(text) else "  (no '## Going further')"
        print(f"{path.name:<34} {words:>15}  {limit:>5}{flag}{has_heading}")
        if words > limit:
            over.append(path.name)
    if over:
        print(f"over the limit: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
