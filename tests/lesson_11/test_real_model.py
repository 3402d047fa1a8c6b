"""`make evals` with a real model's code path, and no key: ChatOpenAI against a local server that
speaks the chat-completions wire format (tests/support/openai_stub.py) and answers like a model
would, deterministically, with one answer that sometimes drops its source. Each case runs three
times; the gate compares pass rates (with their interval) with a baseline `--write-baseline` wrote,
within the tolerance; openevals' judge grades through the same server.

Lesson 11's own check (`make evals-test`, in CI's queue), not `make test`: the gate runs the
dataset four times over, about 80 s of one worker for a learner's first run."""

import json
import re
import subprocess
import sys
import threading

import pytest

from support.lessons import ROOT
from support.server import offline_environment
from tests.support.openai_stub import ChatCompletionsStub

pytestmark = pytest.mark.container

CASES = ["answered-multistage-why", "answered-exec-form", "python-power", "injection-logs-prompt"]
FLAKY = "Why use the exec form of CMD in a Dockerfile?"


class Model:
    """Searches first (or asks run_python for arithmetic), then answers with the first source's
    snippet and cites it [1]. The FLAKY question's answer leaves the citation out on the answers
    `dropped` says (by their number, from 1). The judge's requests (a response_format) get a
    grounded verdict."""

    def __init__(self, dropped: set[int]):
        self.dropped, self.answers, self.lock = dropped, 0, threading.Lock()

    def __call__(self, body: dict) -> dict:
        if body.get("response_format"):
            return {"content": json.dumps({"reasoning": "it quotes the context", "score": True})}
        messages = body["messages"]
        question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        results = [m["content"] for m in messages if m["role"] == "tool"]
        if not results:
            arithmetic = re.search(r"\d[\d*+ ]*\d", question)
            if arithmetic:
                code = f"print({arithmetic[0]})"
                return {"tool_calls": [{"name": "run_python", "arguments": {"code": code}}]}
            return {"tool_calls": [{"name": "search_docs", "arguments": {"query": question}}]}
        snippet = results[0].split("\n")[1]
        cite = " [1]"
        if question == FLAKY:
            with self.lock:
                self.answers += 1
                cite = "" if self.answers in self.dropped else cite
        return {"content": snippet + cite}


def evals(model: Model, *options: str, baselines) -> subprocess.CompletedProcess:
    with ChatCompletionsStub(respond=model) as stub:
        env = offline_environment(
            OPENAI_API_KEY="sk-stub", OPENAI_BASE_URL=stub.base_url, MODEL_NAME="stub-model"
        )
        cases = [arg for case in CASES for arg in ("--case", case)]
        return subprocess.run(
            [sys.executable, "-m", "lesson11", *cases, "--baselines", str(baselines), *options],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    return tmp_path_factory.mktemp("baselines")


@pytest.fixture(scope="module")
def first(baselines, tmp_path_factory):
    """One answer in three without its source, the baseline written from it."""
    report = tmp_path_factory.mktemp("report")
    return evals(Model({2}), "--write-baseline", "--report", str(report), baselines=baselines)


def test_each_case_runs_three_times_and_a_flaky_check_passes_within_the_tolerance(first):
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    out = first.stdout
    assert "with stub-model, 3 run(s) each" in out
    assert re.search(r"^answered-exec-form\s+citations\s+fail 2/3\s", out, re.M), out
    assert re.search(r"^answered-multistage-why\s+citations\s+pass 3/3\s", out, re.M), out
    assert re.search(r"^python-power\s+approval\s+pass 3/3\s+paused before run_python", out, re.M)
    summary = out.strip().splitlines()[-2]
    assert re.search(r"pass rate 0\.\d\d, 95% interval 0\.\d\d-\d\.\d\d\); gate passed", summary)


def test_the_judge_grades_answers_only_with_a_real_model(first):
    judged = re.findall(r"^(\S+)\s+judge\s+pass 3/3\s+groundedness: ", first.stdout, re.M)
    assert set(judged) == {"answered-multistage-why", "answered-exec-form", "injection-logs-prompt"}


def test_the_baseline_holds_the_pass_rates_it_saw(first, baselines):
    written = json.loads((baselines / "stub-model.json").read_text())
    assert written["model"] == "stub-model" and written["runs"] == 3
    assert written["rates"]["answered-exec-form"]["citations"] == pytest.approx(0.667)
    assert written["rates"]["answered-multistage-why"]["citations"] == 1.0


def test_a_check_that_falls_further_than_the_tolerance_below_its_baseline_fails_the_gate(
    first, baselines, tmp_path
):
    worse = evals(Model({1, 2, 3}), "--report", str(tmp_path), baselines=baselines)
    assert worse.returncode == 1, worse.stdout
    assert re.search(r"^answered-exec-form\s+citations\s+FAIL 0/3\s", worse.stdout, re.M)
    assert "gate FAILED: answered-exec-form in" in worse.stdout
    same = evals(Model({3}), "--report", str(tmp_path), baselines=baselines)
    assert same.returncode == 0, same.stdout  # 2 in 3 again: what the baseline said
