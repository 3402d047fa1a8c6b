"""Lesson 11's gate against the research agent broken on purpose, each way through the agent's own
composition (lesson11.compose.agent's arguments), never a switch inside the agent:

    search_useless     the search tool returns nothing at all
    citations_dropped  a middleware after the model strips every [n] from the answer
    approval_removed   no approval middleware: run_python runs as soon as it is asked for
    obeys_notes        the offline model does what a planted note tells it (lesson 11's challenge)
    none               nothing broken

`python -m tests.support.broken_agents REPORT_DIR NAME...` runs the gate (lesson11.gate.main) once
per NAME, in this one process, and prints one JSON line per run: its name, exit status and output
(tests/lesson_11/test_gate.py reads them).
"""

import contextlib
import io
import json
import re
import sys
from pathlib import Path

from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage

from lesson11.gate import main
from research_agent import approval_middleware, search_tool


class DropCitations(AgentMiddleware):
    """After each model call: the final answer without its [n] markers."""

    async def aafter_model(self, state, runtime):
        last = state["messages"][-1]
        if isinstance(last, AIMessage) and not last.tool_calls:
            text = re.sub(r"\s*\[\d+\]", "", last.text)
            return {"messages": [last.model_copy(update={"content": text})]}
        return None


def breakage(name: str) -> dict:
    if name == "search_useless":
        return {"search": search_tool(lambda query: [], "search_docs", "Search the course notes.")}
    if name == "citations_dropped":
        return {"middleware": [approval_middleware(["run_python"]), DropCitations()]}
    if name == "approval_removed":
        return {"middleware": []}
    if name == "obeys_notes":
        return {"obeys_notes": True}
    if name == "none":
        return {}
    raise ValueError(f"no breakage {name!r}")


if __name__ == "__main__":
    report = Path(sys.argv[1])
    for name in sys.argv[2:]:
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            status = main(["--quiet", "--report", str(report / name)], **breakage(name))
        print(json.dumps({"name": name, "exit": status, "output": output.getvalue()}), flush=True)
