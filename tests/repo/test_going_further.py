"""Each "Going further" topic of a lesson doc names the one module that holds it (issue 27 item 8).

Rule: a `###` subsection below `## Going further` that shows Python (an `include`, or the new side
of an `include-diff`) links, in its first paragraph, the file that holds it: one of the Python
files it shows (a topic may also show how the lesson file uses its module). A subsection that shows
no Python (prose, a benchmark, a sidebar, the challenges) has no module to name and is not checked.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = re.compile(r"^<!--\s*include(?P<diff>-diff)?:\s*(?P<specs>[^>]+?)\s*-->\s*$")
PY_LINK = re.compile(r"\]\((?:\.\./)?(?P<path>[^)#\s]+\.py)(?:#[^)]*)?\)")
FENCE = re.compile(r"^(`{3,})")


def subsections(text: str) -> list[tuple[str, list[str]]]:
    """(heading, lines) of each `###` subsection below `## Going further`, code fences skipped
    when looking for headings."""
    found, current, fence, further = [], None, None, False
    for line in text.splitlines():
        if match := FENCE.match(line):
            fence = None if fence and match[1] == fence else fence or match[1]
        if fence is None or FENCE.match(line):
            if line.startswith("## "):
                further = line.strip() == "## Going further"
                current = None
                continue
            if further and line.startswith("### "):
                current = (line[4:].strip(), [])
                found.append(current)
                continue
        if current is not None:
            current[1].append(line)
    return found


def first_paragraph(lines: list[str]) -> str:
    paragraph = []
    for line in lines:
        if not line.strip():
            if paragraph:
                break
            continue
        paragraph.append(line)
    return " ".join(paragraph)


def excerpt_files(lines: list[str]) -> list[str]:
    """The Python files the subsection's excerpts show (an include-diff's new side)."""
    files = []
    for line in lines:
        if match := INCLUDE.match(line):
            spec = match["specs"].split()[-1]  # one spec, or "OLD NEW"
            if (path := spec.split("#", 1)[0]).endswith(".py"):
                files.append(path)
    return files


def unlinked_topics(doc_text: str) -> list[str]:
    """Each subsection that shows Python but whose first paragraph links none of its files."""
    problems = []
    for heading, lines in subsections(doc_text):
        shown = set(excerpt_files(lines))
        linked = set(PY_LINK.findall(first_paragraph(lines)))  # docs/ links: ../ is the root
        if shown and not shown & linked:
            problems.append(f"{heading}: shows {sorted(shown)}, its first paragraph links none")
    return problems


LESSON_DOCS = sorted((ROOT / "docs").glob("[0-9][0-9]-*.md"))


def test_there_are_going_further_topics_that_show_code():
    shown = [
        h
        for doc in LESSON_DOCS
        for h, lines in subsections(doc.read_text())
        if excerpt_files(lines)
    ]
    assert len(shown) >= 10


@pytest.mark.parametrize("doc", LESSON_DOCS, ids=lambda d: d.name)
def test_each_going_further_topic_links_the_module_that_holds_it(doc):
    assert unlinked_topics(doc.read_text(encoding="utf-8")) == []


SAMPLE = """# Lesson 09

## 1. Core

<!-- include: code/09_lesson.py#main -->
```python
```

## Going further

### Pools

In [`research_agent/pool.py`](../research-agent/research_agent/pool.py) (`Pool`).

<!-- include: research-agent/research_agent/pool.py#Pool -->
```python
```

### Caps

The caps, and how the lesson adds them:

<!-- include-diff: code/09_lesson.py#main research-agent/research_agent/caps.py#Caps -->
```diff
### not a heading: inside a fence
```

### Measurements

Prose only, no module to name.
"""


def test_the_rule_reads_topics_their_first_paragraph_and_their_excerpts():
    topics = subsections(SAMPLE)
    assert [heading for heading, _ in topics] == ["Pools", "Caps", "Measurements"]
    assert excerpt_files(topics[1][1]) == ["research-agent/research_agent/caps.py"]
    assert unlinked_topics(SAMPLE) == [
        "Caps: shows ['research-agent/research_agent/caps.py'], its first paragraph links none"
    ]
    linked = SAMPLE.replace(
        "The caps, and how",
        "In [`research_agent/caps.py`](../research-agent/research_agent/caps.py): the caps, "
        "and how",
    )
    assert unlinked_topics(linked) == []
    # a link to another module is not the one that holds the topic
    other = SAMPLE.replace(
        "The caps, and how",
        "Unlike [`research_agent/pool.py`](../research-agent/research_agent/pool.py), how",
    )
    assert len(unlinked_topics(other)) == 1
