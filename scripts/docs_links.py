"""Check the course's Markdown: every relative link and #anchor resolves, and no table is split.

Usage: python scripts/docs_links.py [FILE...]
       (default: README.md, CONTRIBUTING.md, research-agent/README.md, docs/*.md)

A link resolves when its file (or folder) exists, relative to the page that links to it, and its
`#anchor`, when it points into a Markdown page (the same page for `#anchor` alone), is one GitHub
gives that page: a heading's slug or an explicit `<a id="...">` / `<a name="...">`. GitHub's slug:
the heading's text, lowercased, with everything that is not a letter, digit, space, `-` or `_`
removed (`·` and `’` too), spaces turned into `-`, and `-1`, `-2`... added to repeated headings.
Links in fenced code and inline code are not links, and are not checked; links with a scheme
(https:, mailto:) are left to the reader.

A table must not be split by a blank line: the rows after it render as a paragraph of pipes.
pymarkdownlnt (`make lint`) does not report that case, so it is checked here.

Prints how many links and anchors it checked; exits 1 when one is broken. tests/repo/test_docs.py
runs the same check over the same files.
"""

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILES = ["README.md", "CONTRIBUTING.md", "research-agent/README.md", "docs/*.md"]

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
EXPLICIT_ANCHOR = re.compile(r"<a\s[^>]*\b(?:id|name)\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.DOTALL)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
TABLE_ROW = re.compile(r"^ {0,3}\|")
DELIMITER_ROW = re.compile(r"^ {0,3}\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")


def outside_code(text: str) -> list[tuple[int, str]]:
    """The (line number, line) pairs of a page that are not inside a fenced code block."""
    kept, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        marker = FENCE.match(line)
        if fence:
            closing = (
                marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence)
            )
            if closing and not line.strip().strip(fence[0]):
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            continue
        kept.append((number, line))
    return kept


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's Markdown text (before the -1, -2 of repeated headings)."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML, an <a id> included, is not text
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link reads as its text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w: letters, digits and _ in any script
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor GitHub gives a page: heading slugs, with repeats numbered, and <a id/name>."""
    found, seen = set(), {}
    for _, line in outside_code(text):
        found.update(EXPLICIT_ANCHOR.findall(line))
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        anchor, n = base, seen.get(base, 0)
        while anchor in found:
            n += 1
            anchor = f"{base}-{n}"
        seen[base] = n
        found.add(anchor)
    return found


def links(text: str) -> list[tuple[int, str]]:
    """(line, target) of every link and image on a page, outside code."""
    found = []
    for number, line in outside_code(text):
        line = INLINE_CODE.sub("", line)
        for pattern in (INLINE_LINK, HTML_LINK):
            found += [(number, target) for target in pattern.findall(line)]
        found += [(number, target) for target in REFERENCE_DEFINITION.findall(line)]
    return found


def split_tables(text: str) -> list[int]:
    """Lines where rows of pipes start without a header and delimiter row: a table split by a
    blank line (or a table that never had its `| --- |` row)."""
    problems, previous, run = [], None, []
    for number, line in [*outside_code(text), (None, "")]:
        contiguous = previous is not None and number == previous + 1
        if TABLE_ROW.match(line) and (contiguous or not run):
            run.append((number, line))
        else:
            if run and not (len(run) > 1 and DELIMITER_ROW.match(run[1][1])):
                problems.append(run[0][0])
            run = [(number, line)] if TABLE_ROW.match(line) else []
        previous = number
    return problems


@dataclass
class Report:
    links: int = 0
    anchors: int = 0
    broken: list[str] = field(default_factory=list)


def check(files: list[Path], root: Path = ROOT) -> Report:
    report, anchor_cache = Report(), {}

    def anchors_of(path: Path) -> set[str]:
        if path not in anchor_cache:
            anchor_cache[path] = anchors(path.read_text(encoding="utf-8"))
        return anchor_cache[path]

    for page in files:
        text = page.read_text(encoding="utf-8")
        where = page.relative_to(root) if page.is_relative_to(root) else page
        for number in split_tables(text):
            report.broken.append(
                f"{where}:{number}: table rows without a header row:"
                " is the table split by a blank line?"
            )
        for number, target in links(text):
            if not target or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                continue  # https:, mailto: ...: not a file of this repository
            path_text, _, anchor = target.partition("#")
            path_text = unquote(path_text)
            if not path_text:
                path = page
            elif path_text.startswith("/"):
                path = root / path_text.lstrip("/")
            else:
                path = page.parent / path_text
            report.links += 1
            if not path.exists():
                report.broken.append(f"{where}:{number}: {target}: no such file")
                continue
            if anchor and path.suffix == ".md":
                report.anchors += 1
                if unquote(anchor) not in anchors_of(path.resolve()):
                    report.broken.append(f"{where}:{number}: {target}: no such heading or anchor")
    return report


def default_files(root: Path = ROOT) -> list[Path]:
    return [path for pattern in DEFAULT_FILES for path in sorted(root.glob(pattern))]


def main(argv: list[str]) -> int:
    files = [Path(a).resolve() for a in argv] or default_files()
    report = check(files)
    for problem in report.broken:
        print(problem, file=sys.stderr)
    print(
        f"checked {report.links} relative links, {report.anchors} of them with an #anchor,"
        f" in {len(files)} Markdown files: {len(report.broken)} broken"
    )
    return 1 if report.broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
