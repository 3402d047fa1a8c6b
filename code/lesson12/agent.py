"""Lesson 12's agent: the research agent's search (lesson 02) and lesson 10's run_python, which a
person approves before it runs. Each step of docs/12 builds it with a checkpointer of its own.

Offline, one model plays both: a question with arithmetic gets a program for run_python (lesson
04's offline model), any other a search and an answer from the sources (lesson 02's).
"""

import os
from collections.abc import Sequence
from typing import Any

from a2a.helpers import new_data_part, new_text_part
from a2a.types import Part
from langchain.agents import create_agent
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool

from chat_model import OfflineToolCallingModel, make_chat_model
from lesson10.agent import run_python
from research_agent import (
    OfflineReply,
    OfflineResearchModel,
    PacedOfflineModel,
    Settings,
    approval_middleware,
    make_search_tool,
)

SYSTEM_PROMPT = """You answer questions about containerizing AI agents. Search the course's notes
and answer from the sources, citing them like [1]. For anything that needs computing, call
run_python with a program that prints the result, then answer from its output."""
# No word on a rejected run: a reject ends the task (step 2's `ask`), and the model never sees it.


class OfflineModel(OfflineResearchModel, PacedOfflineModel):
    """Searches for a research question; has arithmetic computed by run_python. Each token takes
    OFFLINE_TOKEN_DELAY_MS, streamed or not, as a model's would."""

    python_tool: str | None = None

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "OfflineModel":
        names = [getattr(tool, "name", None) for tool in tools]
        python = "run_python" if "run_python" in names else None
        return self.model_copy(update={"tool_name": names[0], "python_tool": python})

    def _reply(self, messages: list[BaseMessage], max_tokens: int | None) -> OfflineReply:
        question = next((m.text for m in reversed(messages) if isinstance(m, HumanMessage)), "")
        if self.python_tool and OfflineToolCallingModel.expression(question):
            computing = OfflineToolCallingModel(tool_name=self.python_tool)
            return computing._reply(messages, max_tokens)
        return super()._reply(messages, max_tokens)


def build_agent(checkpointer, python_tool: BaseTool = run_python):
    """Search and run_python; a person approves each run_python call (lesson 10's interrupt)."""
    settings = Settings()
    model = make_chat_model(
        os.getenv("OPENAI_API_KEY"),
        offline_token_delay_ms=settings.OFFLINE_TOKEN_DELAY_MS,
        offline_model=OfflineModel,
    )
    return create_agent(
        model,
        [make_search_tool(settings), python_tool],
        system_prompt=SYSTEM_PROMPT,
        middleware=[approval_middleware(["run_python"])],
        checkpointer=checkpointer,
    )


def answer_parts(messages: list[BaseMessage]) -> list[Part]:
    """The answer as text, and its sources as data a client reads without parsing the text."""
    searches = [m for m in messages if isinstance(m, ToolMessage) and m.name != "run_python"]
    sources = [source for m in searches if isinstance(m.artifact, list) for source in m.artifact]
    return [new_text_part(messages[-1].text.strip()), new_data_part({"sources": sources})]
