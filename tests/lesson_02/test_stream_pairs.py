"""docs/02 step 4 shows the pairs `astream(stream_mode=["updates", "messages"])` yields for one
question: their modes and the node each comes from are checked here against a real run of step
3's agent, so the block cannot drift from LangGraph."""

import asyncio
import re

from langchain_core.messages import HumanMessage

from lesson02 import step3_limits as step3
from support.lessons import ROOT
from tests.support.doc_session import section_blocks

DOC = ROOT / "docs" / "02-research-agent.md"


def shown_pairs() -> list[tuple[str, str]]:
    """(mode, node) of each pair the doc shows before its `...`."""
    blocks = section_blocks(DOC, "4. Serve it")
    (shown,) = [block.body for block in blocks if block.body.startswith('("updates"')]
    pairs = []
    for line in shown.split("\n...")[0].splitlines():
        mode = re.match(r'\("(\w+)"', line)[1]
        node = re.search(
            r'"langgraph_node": "([^"]+)"' if mode == "messages" else r'\{"([^"]+)"', line
        )
        pairs.append((mode, node[1]))
    return pairs


async def made_pairs(n: int) -> list[tuple[str, str]]:
    pairs = []
    stream = step3.agent.astream(
        {"messages": [HumanMessage(step3.QUESTION)]},
        context=step3.Run(),
        stream_mode=["updates", "messages"],
    )
    async for mode, data in stream:
        node = data[1]["langgraph_node"] if mode == "messages" else next(iter(data))
        pairs.append((mode, node))
        if len(pairs) == n:  # enough: the rest of the answer is more of the same
            break
    return pairs


def runs(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive pieces from one node as one: a reply streams in many, the doc shows a few."""
    return [pair for i, pair in enumerate(pairs) if i == 0 or pair != pairs[i - 1]]


def test_the_docs_stream_pairs_are_what_the_agent_yields():
    shown = runs(shown_pairs())
    assert len(shown) >= 5, shown
    made = runs(asyncio.run(made_pairs(40)))
    assert made[: len(shown)] == shown
