"""The course maps (README.md and docs/index.md) say how many steps each lesson has, and which
`make lesson-NN STEP=K` runs the last: both must be the step files the lesson's folder holds
(code/lessonNN/stepK_*.py), so a step added or removed fails here until the maps say so."""

import re

import pytest

from support.lessons import ROOT, step_files

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
# Where a lesson's entry starts: a table row `| 05 · ...` or a list item `5. **[Lesson 05 ...`.
ENTRY = re.compile(r"^(?:\| (\d\d) ·|\d+\. \*\*\[Lesson (\d\d))")
COUNT = re.compile(r"\b(" + "|".join(NUMBERS) + r") steps\b")
LAST_STEP = re.compile(
    r"`make lesson-(\d\d) STEP=1` (?:to|…) `(?:make lesson-\d\d )?(?:STEP=)?(\d+)`"
)


def entries(text: str) -> list[tuple[str, str]]:
    """(lesson, its entry's text) for each lesson entry of a map: a row, or an item and the lines
    that continue it."""
    found: list[tuple[str, str]] = []
    for line in text.splitlines():
        start = ENTRY.match(line)
        if start:
            found.append((start[1] or start[2], line))
        elif found and line.startswith("   ") and not found[-1][1].startswith("|"):
            found[-1] = (found[-1][0], found[-1][1] + " " + line.strip())
        elif found and not line.strip():
            found.append(("", ""))  # a blank line ends an item
    return [(lesson, entry) for lesson, entry in found if lesson]


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_course_maps_count_each_lessons_steps(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    wrong, seen = [], set()
    for lesson, entry in entries(text):
        seen.add(lesson)
        steps = len(step_files(lesson))
        for word in COUNT.findall(entry):
            if NUMBERS[word] != steps:
                wrong.append(f"lesson {lesson}: '{word} steps', its folder has {steps}")
        for named, last in LAST_STEP.findall(entry):
            if named == lesson and int(last) != steps:
                wrong.append(f"lesson {lesson}: STEP=1 to {last}, its folder has {steps}")
    assert len(seen) >= 12, f"{page}: found the entries of {sorted(seen)} only"
    assert not wrong, wrong


def test_the_check_reads_a_map():
    sample = "| 05 · Parallel | five steps | `make lesson-05 STEP=1` to `STEP=4` |\n"
    assert entries(sample) == [("05", sample.strip())]
    assert LAST_STEP.findall(sample) == [("05", "4")]
    item = "2. **[Lesson 02 · The agent](x.md)**, with code\n   it: four steps build it\n\nnext"
    assert entries(item) == [
        ("02", "2. **[Lesson 02 · The agent](x.md)**, with code it: four steps build it")
    ]
