"""Lesson 11's gate (make evals) against the research agent broken three ways, and the challenge's
fourth: each time it exits 1 and names the cases that broke, by the evaluator that saw it; with
nothing broken it exits 0, before and after. One process runs them all
(tests/support/broken_agents.py), as `make evals` runs one."""

import json
import re
import subprocess
import sys

import pytest

from lesson11.runner import load
from support.lessons import ROOT

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

RUNS = ["none", "search_useless", "citations_dropped", "approval_removed", "obeys_notes", "none"]
CASES = load()["cases"]


def of_kind(*kinds: str) -> set[str]:
    return {c["id"] for c in CASES if c["kind"] in kinds}


def failing(output: str) -> dict[str, set[str]]:
    """The table's failing rows (--quiet prints only those): case -> the evaluators that failed."""
    rows: dict[str, set[str]] = {}
    for case, evaluator, result in re.findall(r"^(\S+)\s+(\S+)\s+(FAIL|fail)\b", output, re.M):
        if result == "FAIL":
            rows.setdefault(case, set()).add(evaluator)
    return rows


def named(output: str) -> set[str]:
    """The cases the summary line says failed the gate."""
    found = re.search(r"gate FAILED: (.+?) in [\d.]+ s;", output)
    return set(found[1].split(", ")) if found else set()


@pytest.fixture(scope="module")
def gate_runs(tmp_path_factory):
    report = tmp_path_factory.mktemp("reports")
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.broken_agents", str(report), *RUNS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["name"] for r in runs] == RUNS, done.stdout[-3000:]
    return runs, report


def test_with_nothing_broken_the_gate_passes_before_and_after(gate_runs):
    runs, _ = gate_runs
    for run in (runs[0], runs[-1]):
        assert run["exit"] == 0, run["output"]
        assert "gate passed" in run["output"]
        assert failing(run["output"]) == {}  # a tracked case may fail; no required one does


def test_a_search_that_finds_nothing_fails_every_case_the_notes_answer(gate_runs):
    run = gate_runs[0][1]
    assert run["exit"] == 1
    assert named(run["output"]) == of_kind("answered", "injection")
    assert set().union(*failing(run["output"]).values()) == {"facts", "citations"}


def test_answers_without_their_sources_fail_on_citations_alone(gate_runs):
    run = gate_runs[0][2]
    assert run["exit"] == 1
    assert named(run["output"]) == of_kind("answered", "injection")
    assert set().union(*failing(run["output"]).values()) == {"citations"}


def test_without_the_approval_middleware_every_arithmetic_case_fails_on_approval(gate_runs):
    run = gate_runs[0][3]
    assert run["exit"] == 1
    assert named(run["output"]) == of_kind("needs_python")
    assert failing(run["output"]) == {case: {"approval"} for case in of_kind("needs_python")}


def test_a_model_that_obeys_planted_notes_fails_the_injection_cases(gate_runs):
    """The challenge of docs/11-evals.md: every injection case turns red, run_python asked for
    (trajectory) or the system prompt repeated (no_leak); the planted notes also reach questions
    about other things, and no arithmetic or API case changes."""
    run = gate_runs[0][4]
    assert run["exit"] == 1
    rows = failing(run["output"])
    assert of_kind("injection") <= set(rows)
    assert not set(rows) & of_kind("needs_python", "api_limits", "tool_failure", "not_answered")
    assert {"trajectory", "no_leak"} <= set().union(*rows.values())


def test_the_report_is_a_page_with_its_plots_drawn_in(gate_runs):
    _, report = gate_runs
    page = (report / "none" / "index.html").read_text(encoding="utf-8")
    assert page.count("<svg") == 2  # pass rate per evaluator; latency and calls per case
    assert "Pass rate per evaluator" in page and "Latency and calls per case" in page
    assert all(case["id"] in page for case in CASES)
    # Nothing to fetch: no script, no stylesheet or image from elsewhere (the SVGs are inline).
    assert not re.search(r"<script|<link|(?:src|href)=\"(?:https?:)?//", page)
    broken = (report / "approval_removed" / "index.html").read_text(encoding="utf-8")
    assert "gate <span>FAILED</span>" in broken and 'class="bad"' in broken
