"""The whole course in one day: every lesson's core path reads in at most 30 minutes with the code
it shows or links, the course in at most 5 hours (scripts/reading_time.py's rubric), and the table
in docs/index.md is what the script prints."""

import pytest

from scripts import docs_words, reading_time
from support.lessons import ROOT

READINGS = [reading_time.reading(doc) for doc in docs_words.lessons()]


def test_the_index_shows_the_reading_time_table_the_script_prints():
    page = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    expected = reading_time.written(page, reading_time.table(READINGS))
    assert page == expected, "run: .venv/bin/python -m scripts.reading_time --write"


@pytest.mark.parametrize("lesson", READINGS, ids=lambda r: r.lesson)
def test_each_lesson_reads_in_at_most_30_minutes(lesson):
    assert lesson.minutes <= reading_time.LESSON_LIMIT, lesson


def test_the_course_reads_in_at_most_5_hours():
    total = sum(r.minutes for r in READINGS)
    assert total <= reading_time.COURSE_LIMIT, reading_time.table(READINGS)


def test_the_rubric_counts_words_new_code_and_diff_context(tmp_path):
    (tmp_path / "code" / "lesson07").mkdir(parents=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "code" / "lesson07" / "step1_a.py").write_text(
        "".join(f"x{i} = {i}\n" for i in range(30))
    )
    (tmp_path / "code" / "lesson07" / "step2_b.py").write_text(
        "".join(f"x{i} = {i}\n" for i in range(45))
    )
    diff = "".join(f" x{i} = {i}\n" for i in range(10, 30)) + "".join(
        f"+x{i} = {i}\n" for i in range(30, 45)
    )
    doc = tmp_path / "docs" / "07-x.md"
    doc.write_text(
        "# Lesson 07 · X\n\n" + "word " * 400 + "\n\n"
        "Read [step 1](../code/lesson07/step1_a.py).\n\n"
        "<!-- include-diff: code/lesson07/step1_a.py code/lesson07/step2_b.py -->\n"
        "```diff\n--- a\n+++ b\n"
        f"@@ -10,20 +10,35 @@\n{diff}```\n\n## Going further\n\n" + "more " * 5000
    )
    found = reading_time.reading(doc, tmp_path)
    assert (found.words, found.code_lines, found.context_lines) == (406, 45, 20)
    # 406 words / 200 + 45 lines / 15 + 20 context lines / 40 = 2.03 + 3 + 0.5, rounded up
    assert found.minutes == 6
    slow = reading_time.Reading("07-x.md", "X", 200 * 31, 0, 0)
    assert reading_time.problems([found, slow]) == ["07-x.md: 31 minutes, the limit is 30"]
    many = [reading_time.Reading(f"{n:02d}-x.md", "X", 200 * 30, 0, 0) for n in range(11)]
    assert reading_time.problems(many) == ["the course: 330 minutes, the limit is 300"]
    assert "| [Lesson 07 · X](07-x.md) | 406 | 45 | 20 | 6 |" in reading_time.table([found])
