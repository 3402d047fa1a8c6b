"""How long each lesson's core path takes to read, with the code it shows or links.

Usage: python -m scripts.reading_time [--write]   (--write: the table into docs/index.md)

The rubric: prose at WORDS_PER_MINUTE (scripts/docs_words.py counts it), the code a learner reads
for the first time at LINES_PER_MINUTE (scripts/code_to_read.py counts it: a file linked or shown
whole, an excerpt, the lines a diff adds), and the context lines of a diff, met before, at
CONTEXT_LINES_PER_MINUTE. Every lesson must read in at most LESSON_LIMIT minutes, the whole course
in at most COURSE_LIMIT; it exits 1 when one does not. docs/index.md holds the table between two
markers, and a test keeps it equal to what this prints.
"""

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from scripts import code_to_read, docs_words

ROOT = Path(__file__).resolve().parents[1]
WORDS_PER_MINUTE = 200
LINES_PER_MINUTE = 15  # the slow end of 15-20: new code, read to be understood
CONTEXT_LINES_PER_MINUTE = 40  # a diff's unchanged lines, read before
LESSON_LIMIT = 30
COURSE_LIMIT = 5 * 60
START, END = "<!-- reading-time:start -->", "<!-- reading-time:end -->"


@dataclass
class Reading:
    lesson: str  # the doc's file name
    title: str
    words: int
    code_lines: int
    context_lines: int

    @property
    def minutes(self) -> int:
        exact = (
            self.words / WORDS_PER_MINUTE
            + self.code_lines / LINES_PER_MINUTE
            + self.context_lines / CONTEXT_LINES_PER_MINUTE
        )
        return math.ceil(exact)


def context_lines(core: str) -> int:
    """The unchanged lines the core path's diffs show around what they add."""
    count = 0
    for match in code_to_read.INCLUDE.finditer(core):
        block = code_to_read.FENCE.search(core, match.end())
        if match["diff"] and block and block.start() == match.end() + 1:
            count += sum(1 for line in block[2].splitlines() if line.startswith(" "))
    return count


def reading(doc: Path, root: Path = ROOT) -> Reading:
    text = doc.read_text(encoding="utf-8")
    core = docs_words.core_path(text)
    title = text.splitlines()[0].removeprefix("# ").strip()
    return Reading(
        doc.name,
        title,
        docs_words.count_words(core),
        sum(code_to_read.counted(doc, root).values()),
        context_lines(core),
    )


def table(readings: list[Reading]) -> str:
    rows = [
        "| Lesson | Words | Code lines | Diff context | Minutes |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in readings:
        link = f"[{r.title}]({r.lesson})"
        rows.append(f"| {link} | {r.words} | {r.code_lines} | {r.context_lines} | {r.minutes} |")
    total = sum(r.minutes for r in readings)
    hours, minutes = divmod(total, 60)
    rows.append(f"| **The course** | | | | **{total}** ({hours} h {minutes:02d} min) |")
    return "\n".join(rows)


def problems(readings: list[Reading]) -> list[str]:
    found = [
        f"{r.lesson}: {r.minutes} minutes, the limit is {LESSON_LIMIT}"
        for r in readings
        if r.minutes > LESSON_LIMIT
    ]
    total = sum(r.minutes for r in readings)
    if total > COURSE_LIMIT:
        found.append(f"the course: {total} minutes, the limit is {COURSE_LIMIT}")
    return found


def written(page: str, new_table: str) -> str:
    """`page` with the table between the markers replaced by `new_table`."""
    before, start, rest = page.partition(START)
    _, end, after = rest.partition(END)
    if not start or not end:
        raise ValueError(f"no {START} ... {END} block")
    return f"{before}{START}\n\n{new_table}\n\n{END}{after}"  # blank lines: a table stands alone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the table into docs/index.md")
    args = parser.parse_args(argv)
    readings = [reading(doc) for doc in docs_words.lessons()]
    print(table(readings))
    if args.write:
        index = ROOT / "docs" / "index.md"
        index.write_text(written(index.read_text(encoding="utf-8"), table(readings)), "utf-8")
    for problem in problems(readings):
        print(f"! {problem}", file=sys.stderr)
    return 1 if problems(readings) else 0


if __name__ == "__main__":
    sys.exit(main())
