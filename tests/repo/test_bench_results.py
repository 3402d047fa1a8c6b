"""The benchmarks' JSON files (bench/results.py) and the page made from them
(bench/measurements.py), with a fake benchmark's output: no benchmark runs here."""

import json
import re
import sys
from pathlib import Path

import pytest

from bench import measurements
from bench import results as bench_results

ROOT = Path(__file__).resolve().parents[2]

FAKE_REPORT = """\
==> basic: 3 starts
==> host: 3 starts

| image | start->ready s (x host) | p50 ms | vs bare | first token | p50 ms | whole stream |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
| basic | 1.20 (2.40x) | 710 | 1.04x | 60 ms | 3.2–3.3 | 4.69 s |
| host (.venv) | 0.50 (1.00x) | | 0.91× | 4675 ms | 2 | ? |

Target: met

| round | failed |
|------:|-------:|
|     1 |      0 |
"""


@pytest.fixture
def written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_COMMAND", "make bench-fake")
    run = bench_results.start("fake", {"BENCH_RUNS": 3})
    print(FAKE_REPORT, end="")
    path = run.write(tmp_path / "bench-results")
    assert sys.stdout is not run.tee, "write() gives stdout back"
    assert FAKE_REPORT in capsys.readouterr().out, "the benchmark's output still reaches the screen"
    return path


def test_the_writer_produces_the_documented_keys(written):
    assert written.name == "fake.json"
    result = json.loads(written.read_text(encoding="utf-8"))
    documented = set(re.findall(r"^ {4}(\w+) ", bench_results.__doc__, re.M))
    assert set(result) == documented
    pairs = re.findall(r"^ {6}(\w+)(?:, (\w+))?", bench_results.__doc__, re.M)
    assert set(result["machine"]) == {key for pair in pairs for key in pair if key}
    page_intro = (ROOT / "docs" / "measurements.md").read_text(encoding="utf-8").split("\n## ")[0]
    for key in [*result, *result["machine"]]:
        assert f"`{key}`" in page_intro, f"docs/measurements.md does not list the key {key}"

    assert result["schema"] == 1
    assert result["name"] == "fake"
    assert result["command"] == "make bench-fake"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["date"])
    assert result["settings"] == {"BENCH_RUNS": 3}
    machine = result["machine"]
    assert machine["cores"] >= 1 and len(machine["load_average_start"]) == 3
    assert isinstance(machine["python"], str) and machine["python"].startswith("3.")
    assert result["output"] == FAKE_REPORT
    assert result["table_markdown"].startswith("| image |")
    assert result["table_markdown"].endswith("|      0 |\n")


def test_the_printed_tables_become_rows_with_numbers(written):
    tables = json.loads(written.read_text(encoding="utf-8"))["tables"]
    assert len(tables) == 2
    first, second = tables
    assert first["columns"] == [
        "image",
        "start->ready s (x host)",
        "p50 ms",
        "vs bare",
        "first token ms",  # every cell read "N ms": the numbers stay, the unit joins the name
        "p50 ms #2",  # the same header twice
        "whole stream",  # "4.69 s" and "?": not one unit, so text
    ]
    assert first["rows"][0] == {
        "image": "basic",
        "start->ready s (x host)": "1.20 (2.40x)",
        "p50 ms": 710,
        "vs bare": 1.04,
        "first token ms": 60,
        "p50 ms #2": "3.2–3.3",
        "whole stream": "4.69 s",
    }
    assert first["rows"][1]["p50 ms"] is None
    assert first["rows"][1]["vs bare"] == 0.91
    assert first["rows"][1]["first token ms"] == 4675
    assert second == {"columns": ["round", "failed"], "rows": [{"round": 1, "failed": 0}]}


def test_measurements_renders_a_result_as_the_page_shows_it(written, capsys):
    assert measurements.main(["--results", str(written.parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<!-- bench: fake -->\n\n")
    assert out.rstrip().endswith("<!-- /bench: fake -->")
    header = out.splitlines()[2]
    assert header.startswith("Measured on ") and "with `make bench-fake` (BENCH_RUNS=3)" in header
    assert " CPUs" in header and "load average" in header
    # Tables stay tables; the notes between them go into text blocks.
    assert "\n\n| image | start->ready s (x host) |" in out
    assert "\n\n```text\nTarget: met\n```\n\n| round | failed |" in out
    assert "==> basic" not in out


def test_write_replaces_only_the_marked_block(written, tmp_path, capsys):
    page = tmp_path / "measurements.md"
    before = (
        "# Measurements\n\nIntro, with `<!-- bench: fake -->` quoted inline.\n\n"
        "## Lesson\n\nText above.\n\n"
        "<!-- bench: fake -->\n\nold numbers\n\n| a |\n| --- |\n| 1 |\n\n<!-- /bench: fake -->\n\n"
        "Text below, kept.\n\n"
        "<!-- bench: other -->\nnot measured here: left alone\n<!-- /bench: other -->\n"
    )
    page.write_text(before, encoding="utf-8")
    args = ["--results", str(written.parent), "--write", "--doc", str(page)]
    assert measurements.main(args) == 0
    assert f"{page}: replaced fake" in capsys.readouterr().out
    after = page.read_text(encoding="utf-8")
    rendered = measurements.render("fake", json.loads(written.read_text(encoding="utf-8")))
    start = before.index("<!-- bench: fake -->\n\nold")
    end = before.index("<!-- /bench: fake -->") + len("<!-- /bench: fake -->")
    assert after == before[:start] + rendered + before[end:]

    assert measurements.main(args) == 0, "running it again changes nothing"
    assert page.read_text(encoding="utf-8") == after


def test_write_refuses_a_marker_without_its_pair(written, tmp_path):
    page = tmp_path / "measurements.md"
    page.write_text("<!-- bench: fake -->\nnumbers, no end marker\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="markers without their pair: fake"):
        measurements.main(["--results", str(written.parent), "--write", "--doc", str(page)])
    assert page.read_text(encoding="utf-8") == "<!-- bench: fake -->\nnumbers, no end marker\n"


# --- The arithmetic every benchmark shares --------------------------------------------------------


@pytest.mark.parametrize("p", [1, 50, 95, 99])
def test_percentile_agrees_with_statistics_quantiles_inclusive(p):
    import statistics

    samples = [12.0, 3.5, 7.25, 40.0, 9.0, 9.0, 1.0]
    expected = statistics.quantiles(samples, n=100, method="inclusive")[p - 1]
    assert bench_results.percentile(samples, p) == pytest.approx(expected)


def test_percentile_of_one_sample_is_that_sample_and_of_none_is_nan():
    """A run that got a single answer still prints its p95 instead of failing."""
    assert bench_results.percentile([4.2], 95) == 4.2
    assert bench_results.percentile([], 50) != bench_results.percentile([], 50)  # nan


@pytest.mark.parametrize("printed, ms", [("850.5us", 0.8505), ("3.50ms", 3.5), ("1.20s", 1200)])
def test_to_ms_reads_wrks_units(printed, ms):
    assert bench_results.to_ms(printed) == pytest.approx(ms)
