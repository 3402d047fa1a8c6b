"""Lesson 11's parts, each on its own: the dataset says what it promises, the pass rates and the
gate's arithmetic, the trajectory read from real spans, Phoenix's spans read back flat."""

import json
import re
from collections import Counter

import pytest

from lesson11 import compose, report, traces
from lesson11.evaluators import Run, Verdict, applicable, reference, same_program
from lesson11.phoenix import flat, from_phoenix
from lesson11.runner import expand, load, request
from research_agent import BUNDLED_NOTES_DIR
from tests.support.tracing import reset_tracing

DATASET = load()
CASES = DATASET["cases"]
KINDS = {"answered", "not_answered", "needs_python", "tool_failure", "injection", "api_limits"}


def test_the_dataset_is_versioned_and_every_case_says_why_it_is_there():
    assert isinstance(DATASET["version"], int)
    assert 30 <= len(CASES) <= 60
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert set(Counter(c["kind"] for c in CASES)) == KINDS
    for case in CASES:
        assert len(case["reason"]) > 10, case["id"]
        assert set(case["budget"]) == {"tool_calls", "model_calls", "tokens", "seconds"}
        assert case["expect"]["trajectory"]["mode"] in ("strict", "unordered", "subset", "superset")
        assert case.get("environment", "notes") in compose.ENVIRONMENTS
        assert sum(k in case for k in ("query", "json", "body")) == 1, case["id"]


def test_the_notes_a_case_cites_exist_and_the_planted_ones_are_not_the_courses():
    for case in CASES:
        for cited in case["expect"].get("cites", []):
            folder, _, name = cited.partition("/")
            root = {"notes": BUNDLED_NOTES_DIR, "planted": compose.PLANTED_DIR}[folder]
            assert (root / name).is_file(), (case["id"], cited)
    planted = {p.name for p in compose.PLANTED_DIR.glob("*.md")}
    assert planted and not planted & {p.name for p in BUNDLED_NOTES_DIR.rglob("*.md")}
    for note in compose.PLANTED_DIR.glob("*.md"):
        assert re.search(r"run_python|system prompt", note.read_text()), note.name


def test_a_case_asks_what_it_says_and_is_judged_by_what_it_expects():
    long = next(c for c in CASES if c["id"] == "api-query-too-long")
    assert len(request(long)["json"]["query"]) > 2000
    huge = next(c for c in CASES if c["id"] == "api-body-too-large")
    assert len(request(huge)["content"]) > 16_384
    assert expand({"a": [{"repeat": "ab", "times": 2}]}) == {"a": ["abab"]}
    python = next(c for c in CASES if c["kind"] == "needs_python")
    assert applicable(python) == ["trajectory", "approval", "facts", "budget"]
    answered = next(c for c in CASES if c["kind"] == "answered")
    assert applicable(answered) == [
        "status",
        "trajectory",
        "approval",
        "facts",
        "citations",
        "budget",
    ]


def test_run_pythons_program_must_compute_the_cases_expression():
    wanted = {"code": "print(17 * 23 + 4)"}
    assert same_program({"code": "print(17*23 + 4)"}, wanted)
    assert same_program({"code": "x = 17 * 23 + 4\nprint(x)"}, wanted)
    assert not same_program({"code": "print(395)"}, wanted)
    calls = reference([{"name": "run_python", "arguments": wanted}])
    assert json.loads(calls[0]["tool_calls"][0]["function"]["arguments"]) == wanted
    assert [m["role"] for m in calls] == ["assistant", "tool", "assistant"]


def test_wilson_intervals_have_width_at_zero_and_at_every_run():
    low, high = report.wilson(3, 3)
    assert high == 1.0 and 0.4 < low < 0.5
    low, high = report.wilson(0, 3)
    assert low == 0.0 and 0.5 < high < 0.6
    low, high = report.wilson(50, 100)
    assert low == pytest.approx(0.404, abs=0.001) and high == pytest.approx(0.596, abs=0.001)


def runs(case_id: str, passes: list[bool], required: bool = True) -> list:
    case = {"id": case_id, "kind": "answered", "budget": {}, "expect": {}}
    return [
        (Run(case, 200, {}, []), [Verdict(case_id, "facts", p, "why", required)]) for p in passes
    ]


@pytest.mark.parametrize(
    "passes, baseline, required, fails",
    [
        ([True, True, True], None, True, False),
        ([True, True, False], None, True, False),  # 0.67 is within 0.34 of 1.0
        ([True, False, False], None, True, True),  # 0.33 is not
        ([False, False, False], None, False, False),  # a tracked case never fails the gate
        ([True, False, False], 0.67, True, False),  # the baseline said 2 in 3: 1 in 3 is within
        ([False], None, True, True),  # offline: one run, and it must pass
    ],
)
def test_a_required_check_fails_the_gate_below_its_baseline_by_more_than_the_tolerance(
    passes, baseline, required, fails
):
    rates = {"rates": {"c": {"facts": baseline}}} if baseline is not None else None
    result = report.outcome(runs("c", passes, required), rates)
    (row,) = result.rows
    assert row.failing is fails
    assert (result.failing_cases == ["c"]) is fails
    assert row.result().split()[0] == ("FAIL" if fails else "pass" if all(passes) else "fail")


@pytest.fixture
def memory():
    """Spans kept in memory for one test, tracing off again after it."""
    reset_tracing()
    yield traces.InMemoryTraces()
    reset_tracing()


def test_the_trajectory_answer_and_cost_come_from_the_spans_of_a_real_request(memory):
    from fastapi.testclient import TestClient

    with TestClient(compose.app()) as client:
        memory.take()
        answer = client.post("/v1/research", json={"query": "What is 2**100?"})
        spans = memory.take()
    assert answer.status_code == 200
    messages = traces.trajectory(spans)
    assert traces.tool_calls(messages) == [
        {"name": "run_python", "args": {"code": "print(2**100)"}, "ran": False}
    ]
    assert traces.answer(spans) is None  # it waits for a person
    assert traces.usage(spans) | {"seconds": 0} == {
        "tool_calls": 0,
        "model_calls": 1,
        "tokens": traces.usage(spans)["tokens"],
        "seconds": 0,
    }


def test_phoenix_spans_read_back_as_the_exporter_wrote_them():
    stored = {
        "name": "execute_tool search_docs",
        "context": {"trace_id": "ab" * 16, "span_id": "cd" * 8},
        "parent_id": "ef" * 8,
        "span_kind": "INTERNAL",
        "start_time": "2026-11-25T10:00:00.000000+00:00",
        "end_time": "2026-11-25T10:00:00.250000+00:00",
        "status_code": "ERROR",
        "attributes": {"gen_ai": {"operation": {"name": "execute_tool"}, "tool": {"name": "x"}}},
    }
    span = from_phoenix(stored)
    assert span.attributes == {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "x"}
    assert span.error and span.parent_id == "ef" * 8
    assert span.end_ns - span.start_ns == 250_000_000
    assert flat({"a": {"b": 1, "c": {"d": "e"}}, "f": [1]}) == {"a.b": 1, "a.c.d": "e", "f": [1]}
