"""Lessons built from steps (issue 46): what their core path asks a learner to read, and how.

A lesson built from steps has files `code/NN_stepK_what.py`, each run by `make lesson-NN STEP=K`.
These tests hold the promises its doc makes a learner:

1. each step is a small file (at most STEP_MAX_LINES lines);
2. `make lesson-NN STEP=K` runs step K's file;
3. the doc opens with what the learner will learn and closes with a recap, a challenge and a Next
   line, above `## Going further` (every lesson's doc does, stepped or not);
4. the core path's table of code to read states what the core path really shows or links, at most
   scripts/code_to_read.LIMIT lines (scripts/code_to_read.py counts);
5. no core excerpt shows an idea the lesson leaves to Going further or to a later lesson
   (LATER_IDEAS, a list of words per lesson).
The checks are functions of a root folder, tested on a sample tree too.
"""

import re
import subprocess
from pathlib import Path

import pytest

from scripts import code_to_read, docs_words
from support.lessons import ROOT, module_name, step_files

STEP_MAX_LINES = 150
HEADINGS = ["## What you will learn", "## Recap", "## Challenge"]

TRACING = r"\btrac(?:e|er|ing)\b|opentelemetry|\bspans?\b"
DURABLE = r"interrupt|checkpoint|GraphBubbleUp|thread_id|Command\(resume"
LIMITS = r"quota|budget|UntilCut|shutdown_cut|api_keys|require_key"
POOL_EGRESS = r"\bpool(?:ed|s)?\b|made_ahead|EXPIRY_GRACE|egress|network\.options"
GVISOR = r"runsc|gvisor|pids_for"
MCP = r"\bmcp\b"
# What a lesson's core excerpts must not show (case-insensitive), each with why.
LATER_IDEAS = {
    "02": {
        TRACING: "tracing is lesson 09's",
        DURABLE: "durable runs are lesson 10's",
        LIMITS: "keys, quotas and the shutdown cut are Going further",
        POOL_EGRESS + "|" + GVISOR + r"|sandbox": "the sandbox is lesson 04's",
        MCP: "MCP is lesson 08's",
    },
    "04": {
        TRACING: "tracing is lesson 09's",
        DURABLE: "durable runs are lesson 10's",
        LIMITS: "keys, quotas and the shutdown cut are lesson 02's Going further",
        POOL_EGRESS: "the pool and egress are Going further",
        GVISOR: "gVisor is Going further",
        MCP: "MCP is lesson 08's",
    },
    "05": {
        TRACING: "tracing is lesson 09's",
        DURABLE: "durable runs are lesson 10's",
        MCP: "MCP is lesson 08's",
        r"\bwarm\b|owner_token|\bacl\b|\bcaps?\b|recovery|adopt": (
            "warm workers, owner tokens, a Redis user per worker, caps and recovery are Going"
            " further"
        ),
    },
    "07": {
        TRACING: "tracing is lesson 09's",
        DURABLE: "durable runs are lesson 10's",
        MCP: "MCP is lesson 08's",
        r"traceparent|XCLAIM|JUSTID|maxlen|student_token|ALLOWED_HOSTS|appendonly": (
            "renewed claims, bounds, access and AOF are Going further"
        ),
    },
    "08": {
        TRACING + r"|traceparent": "tracing is lesson 09's",
        DURABLE: "durable runs are lesson 10's",
        r"DockerLauncher|docker\.from_env|containers\.run|launcher|catalog|redis|replicas?\b": (
            "servers on demand in containers, the catalog and replicas are Going further"
        ),
    },
    "10": {
        TRACING: "tracing is lesson 09's",
        LIMITS: "keys, quotas and the shutdown cut are lesson 02's Going further",
        r"egress|made_ahead|EXPIRY_GRACE": "the sandbox pool and egress are lesson 04's extras",
        GVISOR: "gVisor is lesson 04's Going further",
        MCP: "MCP is lesson 08's",
    },
}


def stepped_lessons(root: Path = ROOT) -> list[Path]:
    return [doc for doc in docs_words.lessons(root) if step_files(doc.name[:2], root)]


def template_problems(text: str) -> list[str]:
    """What a stepped lesson's core path lacks of the template, or has out of order."""
    core = docs_words.core_path(text)
    if core == text:
        return ["no '## Going further' heading"]
    found = [core.find(f"\n{h}\n") for h in HEADINGS]
    problems = [f"no '{h}'" for h, at in zip(HEADINGS, found, strict=True) if at < 0]
    if not problems and found != sorted(found):
        problems.append(f"the headings are not in the order {HEADINGS}")
    next_line = re.search(r"^Next: \[", core, re.M)
    if not next_line or (found[-1] >= 0 and next_line.start() < found[-1]):
        problems.append("no 'Next: [...]' line after the challenge")
    first = re.search(r"^## ", core, re.M)
    if first and not core[first.start() :].startswith(HEADINGS[0]):
        problems.append(f"the first section is not '{HEADINGS[0]}'")
    return problems


def later_ideas(text: str, lesson: str) -> list[str]:
    """Each core excerpt that shows a word of LATER_IDEAS[lesson], with the word and why."""
    core = docs_words.core_path(text)
    problems = []
    for match in code_to_read.INCLUDE.finditer(core):
        block = code_to_read.FENCE.search(core, match.end())
        if not block or block.start() != match.end() + 1:
            continue
        for pattern, why in LATER_IDEAS.get(lesson, {}).items():
            for word in sorted({m[0] for m in re.finditer(pattern, block[2], re.I)}):
                problems.append(f"{match['specs']} shows {word!r}: {why}")
    return problems


STEPPED = stepped_lessons()
STEPS = [step for doc in STEPPED for step in step_files(doc.name[:2])]


@pytest.mark.parametrize("step", STEPS, ids=lambda p: p.name)
def test_each_step_is_a_small_file(step):
    lines = len(step.read_text(encoding="utf-8").splitlines())
    assert lines <= STEP_MAX_LINES, f"{step.name} has {lines} lines, the limit is {STEP_MAX_LINES}"


@pytest.mark.parametrize("step", STEPS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_make_lesson_step_runs_that_step(step):
    lesson, number = step.parent.name.removeprefix("lesson"), re.match(r"step(\d)_", step.name)[1]
    dry = subprocess.run(
        ["make", "-n", f"lesson-{lesson}", f"STEP={number}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.returncode == 0, dry.stderr
    assert module_name(step) in dry.stdout, dry.stdout[-2000:]  # python -m, or lesson-05.sh run
    others = [s.name for s in step_files(lesson) if s != step and module_name(s) in dry.stdout]
    assert not others, f"make lesson-{lesson} STEP={number} also runs {others}"


@pytest.mark.parametrize("doc", docs_words.lessons(), ids=lambda d: d.name)
def test_every_lesson_opens_with_what_you_learn_and_ends_with_a_recap(doc):
    assert template_problems(doc.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("doc", code_to_read.tabled_lessons(ROOT), ids=lambda d: d.name)
def test_the_code_to_read_table_is_what_the_core_path_shows(doc):
    assert code_to_read.problems(doc) == []


@pytest.mark.parametrize("doc", STEPPED, ids=lambda d: d.name)
def test_no_core_excerpt_shows_an_idea_left_for_later(doc):
    assert later_ideas(doc.read_text(encoding="utf-8"), doc.name[:2]) == []


# --- the checks themselves, on a sample tree --------------------------------------------------


@pytest.fixture
def sample(tmp_path):
    (tmp_path / "code" / "lesson07").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "code" / "lesson07" / "step1_a.py").write_text(
        "".join(f"x{i} = {i}\n" for i in range(10))
    )
    (tmp_path / "code" / "lesson07" / "step2_b.py").write_text(
        "".join(f"x{i} = {i}\n" for i in range(10)) + "y = 1\nz = 2\n"
    )
    (tmp_path / "code" / "helper.py").write_text("def f():\n    return 1\n\n\nDONE = 1\n")
    return tmp_path


def sample_doc(root: Path, table: str, core: str, further: str = "") -> Path:
    doc = root / "docs" / "07-x.md"
    doc.write_text(
        f"# Lesson 07\n\n{table}\n{core}\n## Going further\n\n{further}", encoding="utf-8"
    )
    return doc


TABLE = (
    "| Code to read | Lines |\n| --- | --- |\n"
    "| [`code/lesson07/step1_a.py`](../code/lesson07/step1_a.py) | 10 |\n"
    "| `code/lesson07/step2_b.py` (diff) | 2 |\n| `code/helper.py` | 2 |\n| **Total** | **14** |\n"
)
CORE = (
    "Read [step 1](../code/lesson07/step1_a.py), not [the notes](../notes/a.md).\n\n"
    "<!-- include-diff: code/lesson07/step1_a.py code/lesson07/step2_b.py -->\n"
    "```diff\n--- a\n+++ b\n"
    "@@ -9,1 +9,3 @@\n x9 = 9\n+y = 1\n+z = 2\n```\n\n"
    "<!-- include: code/helper.py#f -->\n```python\ndef f():\n    return 1\n```\n"
)


def test_the_counter_counts_links_whole_excerpts_and_the_added_lines_of_a_diff(sample):
    doc = sample_doc(sample, TABLE, CORE)
    assert code_to_read.counted(doc, sample) == {
        "code/lesson07/step1_a.py": 10,
        "code/lesson07/step2_b.py": 2,
        "code/helper.py": 2,
    }
    assert code_to_read.problems(doc, sample) == []
    # a link under Going further is not core reading
    doc = sample_doc(sample, TABLE, CORE, further="[helper](../code/helper.py)\n")
    assert code_to_read.problems(doc, sample) == []


def test_a_table_that_misstates_a_file_or_the_total_or_exceeds_the_limit_is_named(sample):
    doc = sample_doc(sample, TABLE.replace("| 2 |\n| `code/helper", "| 1 |\n| `code/helper"), CORE)
    assert code_to_read.problems(doc, sample) == [
        "code/lesson07/step2_b.py: the table says 1, the core path shows 2",
        "the Total row says 14, the rows add up to 13",
    ]
    linked = CORE + "\nAll of [the helper](../code/helper.py).\n"  # linked: the whole file
    doc = sample_doc(sample, TABLE, linked)
    assert code_to_read.problems(doc, sample) == [
        "code/helper.py: the table says 2, the core path shows 5"
    ]
    doc = sample_doc(sample, TABLE, CORE)
    assert code_to_read.problems(doc, sample, limit=13) == [
        "14 lines of code to read, the limit is 13"
    ]
    doc = sample_doc(sample, "", CORE)
    assert "no '| Code to read | Lines |' table" in code_to_read.problems(doc, sample)[0]


def test_the_template_check_names_what_is_missing_or_out_of_order():
    good = (
        "# L\n\n## What you will learn\n\n## 1. Step\n\n## Recap\n\n## Challenge\n\n"
        "Next: [L](x.md)\n\n## Going further\n"
    )
    assert template_problems(good) == []
    assert template_problems(good.replace("## Recap\n", "")) == ["no '## Recap'"]
    swapped = good.replace("## Recap", "## TMP").replace("## Challenge", "## Recap")
    assert template_problems(swapped.replace("## TMP", "## Challenge")) == [
        f"the headings are not in the order {HEADINGS}"
    ]
    late = good.replace(
        "## What you will learn\n\n## 1. Step", "## 1. Step\n\n## What you will learn"
    )
    assert template_problems(late) == ["the first section is not '## What you will learn'"]
    assert template_problems(good.replace("Next: [L](x.md)", "")) == [
        "no 'Next: [...]' line after the challenge"
    ]


def test_a_later_idea_in_a_core_excerpt_is_named_with_why():
    doc = (
        "# L\n\n<!-- include: code/lesson04/step2_x.py#run -->\n```python\n"
        "runner = ContainerPool(size=2)  # pooled\n```\n\n## Going further\n\n"
        "<!-- include: code/lesson04/step2_x.py#pool -->\n```python\npool = 1\n```\n"
    )
    assert later_ideas(doc, "04") == [
        "code/lesson04/step2_x.py#run shows 'pooled': the pool and egress are Going further"
    ]
    assert (
        later_ideas(doc.replace("pooled", "fresh").replace("ContainerPool", "Runner"), "04") == []
    )
