"""docs/09 section 1 shows one question's LangChain callbacks (the middleware's nodes left out) as
a table: the callbacks, their order and the runs' parents are checked here against what the
research agent really makes, so the table cannot drift from LangChain."""

import asyncio

from langchain_core.callbacks import BaseCallbackHandler

from research_agent import Settings, build_agent
from support.lessons import ROOT
from tests.support.doc_session import section_blocks

DOC = ROOT / "docs" / "09-traces.md"


def shown_rows() -> tuple[list[list[str]], list[list[str]]]:
    """The table's rows as [callback, run, parent] (parent only on a start), before and after its
    `...` row."""
    blocks = section_blocks(DOC, "1. Spans")
    (table,) = [block.body for block in blocks if block.body.startswith("callback ")]
    head, *lines = table.splitlines()
    run, parent, name = head.index("run"), head.index("parent"), head.index("name")
    rows = []
    for line in lines:
        cells = [line[:run].strip(), line[run:parent].strip(), line[parent:name].strip()]
        rows.append([cell for cell in cells if cell])
    cut = next(i for i, row in enumerate(rows) if row[0] == "...")
    return rows[:cut], rows[cut + 1 :]


class Record(BaseCallbackHandler):
    """Each callback as (callback, run letter, parent letter, name), runs lettered A, B, ..."""

    run_inline = True

    def __init__(self):
        self.seen, self.letters = [], {}

    def letter(self, run_id):
        return run_id and self.letters.setdefault(run_id, chr(ord("A") + len(self.letters)))

    def record(self, callback, run_id, parent_run_id=None, name=""):
        self.seen.append((callback, self.letter(run_id), self.letter(parent_run_id), name))

    def on_chain_start(self, serialized, inputs, *, run_id, parent_run_id=None, **kwargs):
        self.record("on_chain_start", run_id, parent_run_id, kwargs.get("name", ""))

    def on_chain_end(self, outputs, *, run_id, **kwargs):
        self.record("on_chain_end", run_id)

    def on_chat_model_start(self, serialized, messages, *, run_id, parent_run_id=None, **kwargs):
        self.record("on_chat_model_start", run_id, parent_run_id)

    def on_llm_end(self, response, *, run_id, **kwargs):
        self.record("on_llm_end", run_id)

    def on_tool_start(self, serialized, input_str, *, run_id, parent_run_id=None, **kwargs):
        self.record("on_tool_start", run_id, parent_run_id, serialized["name"])

    def on_tool_end(self, output, *, run_id, **kwargs):
        self.record("on_tool_end", run_id)


def test_the_docs_table_of_callbacks_is_what_langchain_calls():
    head, tail = shown_rows()
    record = Record()
    agent = build_agent(Settings(OFFLINE_TOKEN_DELAY_MS=0))
    asyncio.run(agent.research("Why use a multi-stage Docker build?", callbacks=[record]))
    middleware = {run for _, run, _, name in record.seen if "Middleware" in name}
    made = [
        [callback, run, *([parent or "-"] if callback.endswith("_start") else [])]
        for callback, run, parent, _ in record.seen
        if run not in middleware
    ]
    assert made[: len(head)] == head
    assert made[-len(tail) :] == tail
