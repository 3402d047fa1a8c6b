"""Lesson 09's last step and the research agent trace the doc's question alike.

Step 4 (code/lesson09/step4_ingest.py) is a small copy of the research agent's tracing
(research_agent/tracing/otel.py and genai_spans.py, turned on by OTEL_EXPORTER_OTLP_ENDPOINT). Both
run as processes, as `make lesson-09 STEP=4` and the image start them, each exporting over OTLP to
a local collector of its own (step 4 through its ingest). Each is asked docs/09's question, as a
caller whose trace is known, and the two traces must be the same tree: each span's name, its
parent's name, and the key attributes the step records for its kind of span (the GenAI operation;
the agent's name; the model and its token counts; the tool's name; the request's method, route and
status). What the research agent records beyond them (the provider, the usage summed on the
agent's span, the tool call's id...) is what docs/09's Going further says it adds.
"""

import sys
import uuid

import httpx
import pytest

from support.lessons import AGENT_DIR, ROOT, run_module
from support.otlp import OtlpCollector
from support.ports import free_port
from support.waiting import wait_for

STEP = "code/lesson09/step4_ingest.py"
QUESTION = "Why use a multi-stage Docker build?"  # the doc's (steps 1 to 3, and make lesson-09)
OPERATION = "gen_ai.operation.name"
# The attributes compared, by the span's GenAI operation (None: the request's span).
KEY_ATTRIBUTES = {
    "invoke_agent": (OPERATION, "gen_ai.agent.name"),
    "chat": (
        OPERATION,
        "gen_ai.request.model",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
    ),
    "execute_tool": (OPERATION, "gen_ai.tool.name"),
    None: ("http.request.method", "http.route", "http.response.status_code"),
}
SPANS = 5  # the request, the agent, two model calls and a search


def attributes(span) -> dict:
    found = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        found[item.key] = getattr(item.value, kind) if kind else None
    return found


def tree(spans: list) -> list[tuple]:
    """The trace as compared: in the order the spans started, each one's name, its parent's name
    (None for the caller's span, which is not in the collector) and its key attributes."""
    names = {span.span_id: span.name for span in spans}
    compared = []
    for span in sorted(spans, key=lambda s: s.start_time_unix_nano):
        found = attributes(span)
        keys = KEY_ATTRIBUTES[found.get(OPERATION)]
        compared.append(
            (span.name, names.get(span.parent_span_id), {key: found.get(key) for key in keys})
        )
    return compared


def asked(base_url: str, collector: OtlpCollector) -> list[tuple]:
    """The question asked as a caller with a trace of its own: that trace, as compared."""
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    answer = httpx.post(
        f"{base_url}/v1/research", json={"query": QUESTION}, headers=headers, timeout=60
    )
    assert answer.status_code == 200, answer.text
    mine = lambda: [s for s in collector.spans() if s.trace_id.hex() == trace_id]  # noqa: E731
    return tree(wait_for(lambda: len(mine()) >= SPANS and mine(), timeout=30, what="the trace"))


@pytest.fixture
def collectors():
    with OtlpCollector() as step, OtlpCollector() as research_agent:
        yield step, research_agent


def test_the_question_is_the_docs():
    doc = (ROOT / "docs" / "09-traces.md").read_text(encoding="utf-8")
    assert f'"query": "{QUESTION}"' in doc


def test_the_last_step_traces_the_question_as_the_research_agent_does(server_process, collectors):
    to_step, to_research_agent = collectors
    ingest = free_port()
    step = server_process(
        [sys.executable, *run_module(STEP)], cwd=ROOT, ready_path="/openapi.json",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{ingest}", INGEST_PORT=ingest,
        VIEWER_URL=to_step.endpoint, OTEL_BSP_SCHEDULE_DELAY=100,
    )  # fmt: skip
    research_agent = server_process(
        [sys.executable, "main.py"], cwd=AGENT_DIR, ready_path="/ready",
        OTEL_EXPORTER_OTLP_ENDPOINT=to_research_agent.endpoint, OTEL_BSP_SCHEDULE_DELAY=100,
    )  # fmt: skip
    traced = asked(research_agent.url, to_research_agent)
    assert [name for name, _, _ in traced] == [
        "POST /v1/research",
        "invoke_agent research-agent",
        "chat offline-research-model",
        "execute_tool search_docs",
        "chat offline-research-model",
    ]
    assert asked(step.url, to_step) == traced
