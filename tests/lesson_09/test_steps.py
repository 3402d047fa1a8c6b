"""Lesson 09's steps (code/lesson09/step1_spans.py ... code/lesson09/step4_ingest.py) as
docs/09-traces.md has a learner run them, each compared with the doc.

Each step keeps the names of the one before and mostly adds its idea; `make lesson-09 STEP=K` runs
step K after a banner (`make lesson-09-banner` prints it alone), and `make lesson-09` alone brings
up the stack. In `make test` a local OTLP collector stands in for the viewer: step 1 is run by
`make` as the doc types it; step 2 prints what the doc shows and exports the spans it printed;
steps 3 and 4 are started as `make` starts them and the doc's blocks are typed into one bash
(tests/support/doc_session.py), their output compared with the doc; the challenge is done as the
doc says. The test marked `container` (`make traces-test`) types step 4's blocks again with the
stack's viewer, Phoenix, behind the ingest, and finds a question's trace there.
"""

import os
import re
import subprocess
import sys
import uuid

import httpx
import pytest

from support import zygote
from support.lessons import ROOT, module_name, run_module
from support.otlp import OtlpCollector
from support.ports import free_port
from support.server import offline_environment
from support.waiting import wait_for
from tests.support.doc_session import Terminal, differences, section_blocks, section_steps
from tests.support.steps import dropped_names, step_changes

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "09-traces.md"
STEPS = [
    "code/lesson09/step1_spans.py",
    "code/lesson09/step2_otlp.py",
    "code/lesson09/step3_traceparent.py",
    "code/lesson09/step4_ingest.py",
]
PAIRS = list(zip(STEPS, STEPS[1:], strict=False))
# What a step runs when it is run, and the next step replaces: its demonstration.
DEMO = {"QUESTION", "main"}
# The caller's context step 3's curl sends: the trace and the span its request goes under.
CALLER_TRACE, CALLER_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
DOC_PORTS = {"api": "localhost:8000", "ingest": "localhost:4318", "viewer": "localhost:6006"}


def make(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MAKE"))}
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=ROOT, env={**environment, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def dry_run(*args: str) -> str:
    done = make("-n", "-o", ".venv/.lessons", "-o", "docker-tools", "-o", "offline-images", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def banner(step: int) -> str:
    """What `make lesson-09 STEP=K` prints before the step's own output."""
    done = make("-s", "lesson-09-banner", f"STEP={step}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def shown(section: str) -> list[tuple[str, str | None]]:
    """The section's shell blocks, each with the output block that follows it."""
    return [
        (command.body, output.body if output else None)
        for command, output in section_steps(DOC, section)
    ]


def test_the_steps_are_the_files_make_runs():
    assert sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("code/lesson09/step*.py")) == STEPS
    alone = dry_run("lesson-09")
    assert "up --build -d --wait" in alone and "lesson09.step" not in alone  # the stack


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_make_lesson_09_step_k_runs_step_k_with_a_banner_and_the_viewer_it_needs(step):
    commands = dry_run("lesson-09", f"STEP={step}")
    assert commands.splitlines()[-1].endswith(f"python -m {module_name(STEPS[step - 1])}")
    assert f"Lesson 09, step {step} of 4" in commands and "docs/09-traces.md" in commands
    assert ("up -d --wait viewer" in commands) == (step > 1)  # steps 2 to 4 export to it
    endpoint = re.search(r"OTEL_EXPORTER_OTLP_ENDPOINT=(\S+) ", commands.splitlines()[-1])
    expected = {1: None, 2: "http://127.0.0.1:6006", 3: "http://127.0.0.1:6006"}
    expected[4] = "http://127.0.0.1:4318"  # its ingest, which passes the spans to the viewer
    assert (endpoint and endpoint[1]) == expected[step]


def test_a_step_that_does_not_exist_is_refused_before_anything_starts():
    done = make("lesson-09", "STEP=9")
    assert done.returncode != 0
    assert "the steps are STEP=1 to STEP=4" in done.stderr
    assert "docker" not in done.stdout + done.stderr


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_keeps_every_name_of_the_one_before(before, after):
    missing = dropped_names(before, after, DEMO)
    assert not missing, f"{after} drops {missing}"


# What each step may take away from the one before: its docstring's two lines, and step 2's
# import and provider line it extends, step 3's script ending (asyncio, QUESTION, main), step 4's
# `uvicorn.run` that now runs beside the ingest.
MOST_REMOVED = {PAIRS[0]: 4, PAIRS[1]: 13, PAIRS[2]: 6}


@pytest.mark.parametrize("before, after", PAIRS)
def test_the_next_step_mostly_adds(before, after):
    removed, added = step_changes(before, after)
    assert len(removed) <= MOST_REMOVED[(before, after)], "\n".join(removed)
    assert len(added) > len(removed)


# --- Run as the doc has them run --------------------------------------------------------------


def test_step_1_prints_its_spans_as_the_doc_shows():
    [(command, output)] = shown("1.")
    assert command == "make lesson-09 STEP=1"
    done = make(*command.split()[1:], OFFLINE_TOKEN_DELAY_MS="0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (problems := differences(output, done.stdout)), problems


def test_step_2_prints_its_spans_and_exports_them_to_the_endpoint(tmp_path):
    [(command, output)] = shown("2.")
    assert command == "make lesson-09 STEP=2"
    with OtlpCollector() as viewer:  # where make sends it: the viewer
        env = offline_environment(OTEL_EXPORTER_OTLP_ENDPOINT=viewer.endpoint)
        log = tmp_path / "step-2.log"
        step = zygote.start([sys.executable, *run_module(STEPS[1])], ROOT, env, log_path=log)
        assert step.wait(120) == 0, log.read_text()
        printed = log.read_text()
        assert not (problems := differences(output, banner(2) + printed)), problems
        # Sent before the process exited: the spans it printed, one trace.
        sent = {span.span_id.hex(): span for span in viewer.spans()}
        printed = re.findall(r"span ([0-9a-f]{16})", printed)
        assert sorted(sent) == sorted(printed) and len(printed) == 4
        (trace_id,) = re.findall(r"trace ([0-9a-f]{32})", log.read_text())
        assert {span.trace_id.hex() for span in sent.values()} == {trace_id}
        assert viewer.service_names() == {"lesson-09"}


class Step:
    """Step 3 or 4 started as `make lesson-09 STEP=K` starts it, on free ports, its spans going
    to `viewer` (step 4's through its own ingest); the doc's blocks typed into one bash."""

    def __init__(self, server_process, step: int, viewer: str, tmp_path, path: str | None = None):
        self.step, self.ports = step, {"ingest": free_port()}
        settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": viewer, "OTEL_BSP_SCHEDULE_DELAY": "200"}
        if step == 4:
            ingest = f"http://127.0.0.1:{self.ports['ingest']}"
            settings.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=ingest,
                INGEST_PORT=self.ports["ingest"],
                VIEWER_URL=viewer,
            )
        self.server = server_process(
            [sys.executable, *run_module(path or STEPS[step - 1])], cwd=ROOT,
            ready_path="/openapi.json", OFFLINE_TOKEN_DELAY_MS=0, **settings,
        )  # fmt: skip
        self.ports["api"] = self.server.port
        self.viewer = viewer
        self.terminal = Terminal(ROOT, dict(os.environ))

    def at_ports(self, text: str) -> str:
        ports = {"viewer": self.viewer.removeprefix("http://127.0.0.1:"), **self.ports}
        for name, written in DOC_PORTS.items():
            text = text.replace(written, f"localhost:{ports[name]}")
        return text

    def type(self, command: str, output: str | None) -> str:
        printed, status = self.terminal.run(self.at_ports(command), timeout=120)
        assert status == 0, f"{command}\nexited {status}:\n{printed}"
        if output is not None:
            assert not (problems := differences(output, printed)), f"{command}\n{problems}"
        return printed

    def close(self) -> None:
        self.terminal.close()


@pytest.fixture
def collector():
    with OtlpCollector() as viewer:
        yield viewer


def test_step_3_continues_the_callers_trace_as_the_doc_shows(server_process, collector, tmp_path):
    (start, _), (curl, answer) = shown("3.")
    assert start == "make lesson-09 STEP=3" and CALLER_TRACE in curl and CALLER_SPAN in curl
    # The block after the answer: what the first terminal shows once the request is done.
    *_, asked, answered, first_terminal = section_blocks(DOC, "3.")
    assert (asked.body, answered.body, first_terminal.lang) == (curl, answer, "text")
    step = Step(server_process, 3, collector.endpoint, tmp_path)
    try:
        printed = step.type(curl, answer)
    finally:
        step.close()
    request = re.search(r"^traceresponse: 00-([0-9a-f]{32})-([0-9a-f]{16})-01\s*$", printed, re.M)
    assert request and request[1] == CALLER_TRACE
    wait_for(
        lambda: "POST /v1/research" in step.server.log_text(), timeout=30, what="the request's span"
    )
    log = banner(3) + step.server.log_text()
    assert not (problems := differences(first_terminal.body, log)), problems
    # The viewer's copy: the request's span under the caller's, the agent's under the request's.
    spans = wait_for(lambda: trace_of(collector, CALLER_TRACE, 5), timeout=30, what="the trace")
    by_name = {span.name: span for span in spans}
    assert by_name["POST /v1/research"].span_id.hex() == request[2]
    assert by_name["POST /v1/research"].parent_span_id.hex() == CALLER_SPAN
    assert by_name["invoke_agent research-agent"].parent_span_id.hex() == request[2]


def trace_of(collector: OtlpCollector, trace_id: str, at_least: int) -> list | None:
    spans = [span for span in collector.spans() if span.trace_id.hex() == trace_id]
    return spans if len(spans) >= at_least else None


def step_4_blocks() -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """Section 4's blocks after `make lesson-09 STEP=4`: those that reach the API and the ingest,
    and those that read the viewer itself (Phoenix only)."""
    (start, _), *typed = shown("4.")
    assert start == "make lesson-09 STEP=4"
    viewer = [block for block in typed if DOC_PORTS["viewer"] in block[0]]
    assert viewer and all(DOC_PORTS["viewer"] not in c for c, _ in typed[: -len(viewer)])
    return typed[: -len(viewer)], viewer


def test_step_4_exports_through_its_ingest_which_refuses_reads(server_process, collector, tmp_path):
    ingest_blocks, _ = step_4_blocks()
    step = Step(server_process, 4, collector.endpoint, tmp_path)
    try:
        for command, output in ingest_blocks:
            step.type(command, output)
    finally:
        step.close()
    # The question's spans reached the viewer through the ingest; the ingest made none of its own.
    names = lambda: {span.name for span in collector.spans()}  # noqa: E731
    wait_for(lambda: "invoke_agent research-agent" in names(), timeout=30, what="the agent's span")
    assert "POST /v1/traces" not in names()


def test_step_4_as_written_with_the_stacks_viewer(server_process, lesson09, tmp_path):
    """Step 4's blocks, the viewer's own included, against Phoenix; then a question whose trace
    id the test chose, found in Phoenix: it came through the ingest."""
    ingest_blocks, viewer_blocks = step_4_blocks()
    step = Step(server_process, 4, lesson09.viewer, tmp_path)
    try:
        for command, output in ingest_blocks + viewer_blocks:
            step.type(command, output)
    finally:
        step.close()
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    asked = httpx.post(
        f"{step.server.url}/v1/research", json={"query": "What is a bind mount?"},
        headers={"traceparent": traceparent}, timeout=60,
    )  # fmt: skip
    assert asked.status_code == 200, asked.text
    lesson09.wait_for_trace(trace_id, "invoke_agent research-agent", "execute_tool search_docs")


def test_section_5s_question_through_the_stacks_edge_as_written(lesson09):
    """Section 5's block after its `make lesson-09` (the `lesson09` fixture is that stack, on
    ports of its own): the answer names its trace, which the viewer holds, agent and all."""
    [(block, _)] = shown("5.")
    make_line, *curl = block.splitlines()
    assert make_line == "make lesson-09" and "127.0.0.1:8090" in curl[0]
    edge = lesson09.edge.removeprefix("http://")
    lesson09.forget_answers()  # not a cache hit: the question may have been asked before
    terminal = Terminal(ROOT, dict(os.environ))
    try:
        printed, status = terminal.run("\n".join(curl).replace("127.0.0.1:8090", edge), timeout=120)
    finally:
        terminal.close()
        lesson09.forget_answers()  # nor for the tests after this one
    assert status == 0 and printed.startswith("HTTP/1.1 200 OK"), printed
    trace_id = re.search(r"^traceresponse: 00-([0-9a-f]{32})-", printed, re.M)[1]
    lesson09.wait_for_trace(trace_id, "invoke_agent research-agent", "execute_tool search_docs")


def test_the_challenge_a_traced_ingest_traces_its_own_exports(server_process, collector, tmp_path):
    """docs/09's challenge as written: step 4 with the ingest's tracing turned on, one question
    asked, then none. `POST /v1/traces` spans keep coming, each the root of a trace of its own:
    every export makes a span, which the next export carries."""
    text = DOC.read_text(encoding="utf-8")
    challenge = text[text.index("## Challenge") :].split("<details>")[0]
    old, new = re.search(r"change the ingest's `(.+?)` to\s+`(.+?)`", challenge).groups()
    source = (ROOT / STEPS[3]).read_text(encoding="utf-8")
    assert source.count(old) == 1, f"the challenge's {old!r} is not once in step 4"
    changed = tmp_path / "09_step4_challenge.py"
    changed.write_text(source.replace(old, new), encoding="utf-8")
    step = Step(server_process, 4, collector.endpoint, tmp_path, path=str(changed))
    try:
        step.type(step_4_blocks()[0][0][0], None)  # one question, as in step 4
    finally:
        step.close()
    loop = lambda: [s for s in collector.spans() if s.name == "POST /v1/traces"]  # noqa: E731
    exports = wait_for(lambda: len(loop()) >= 4 and loop(), timeout=60, what="exports' spans")
    assert all(not span.parent_span_id for span in exports)
    assert len({span.trace_id for span in exports}) == len(exports)
