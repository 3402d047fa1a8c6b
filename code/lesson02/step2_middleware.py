"""Lesson 02, step 2: step 1 with agent middleware around each search: a time limit, a failed
search as a message the model reads, and sources numbered once per run.

Run it:  make lesson-02 STEP=2
Diff it: diff code/lesson02/step1_agent.py code/lesson02/step2_middleware.py
"""

import asyncio
import os
from dataclasses import dataclass, field

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from chat_model import make_chat_model
from research_agent import (
    BUNDLED_NOTES_DIR,
    SYSTEM_PROMPT,
    LocalSearch,
    OfflineResearchModel,
    format_results,
)

QUESTION = os.getenv("QUESTION", "What does docker stop do?")
OPENAI_API_KEY = os.getenv("OPENAI_API_KEY")
# The name answers carry: the real model's, or the offline stand-in's.
MODEL_NAME = os.getenv("MODEL_NAME", "gpt-4o-mini") if OPENAI_API_KEY else "offline-research-model"
SEARCH_MAX_RESULTS = 4
SEARCH_TIMEOUT_SECONDS = float(os.getenv("SEARCH_TIMEOUT_SECONDS", "10"))

# BM25 over each section of the Markdown notes in research-agent/notes/, indexed once, at start.
notes = LocalSearch([BUNDLED_NOTES_DIR])


@tool(response_format="content_and_artifact")
def search_docs(query: str) -> tuple[str, list[dict]]:
    """Search the course documentation and notes about containers, Docker and deploying AI
    agents. Input: a search query. Returns numbered passages with their file paths."""
    sources = notes.search(query, SEARCH_MAX_RESULTS)  # [{"title", "url", "snippet"}, ...]
    # The model reads the text; the sources travel with it, as the ToolMessage's artifact.
    return format_results(list(enumerate(sources, 1))), sources


@dataclass
class Run:
    """One run's searches, and every source they found, each numbered once, from 1."""

    steps: list[dict] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)

    def number(self, source: dict) -> int:
        if source["url"] not in [known["url"] for known in self.sources]:
            self.sources.append(source)
        return [known["url"] for known in self.sources].index(source["url"]) + 1


class SearchToolMiddleware(AgentMiddleware):
    """Wraps each search the agent makes; the run's `Run` comes as its runtime context."""

    async def awrap_tool_call(self, request, handler):
        call, run = request.tool_call, request.runtime.context
        step = {"tool": call["name"], "input": call["args"].get("query", ""), "status": "success"}
        run.steps.append(step)
        try:
            found = await asyncio.wait_for(handler(request), SEARCH_TIMEOUT_SECONDS)
        except Exception as exc:  # timed out or failed: the model reads why, and carries on
            timed_out = isinstance(exc, TimeoutError)
            error = f"timed out after {SEARCH_TIMEOUT_SECONDS:g} s" if timed_out else repr(exc)
            step.update(status="error", sources=[], error=error)
            text = f"Error: the search failed ({error}). Try again later or answer without sources."
            return ToolMessage(text, tool_call_id=call["id"], status="error", artifact=step)
        numbered = [(run.number(source), source) for source in found.artifact]
        step.update(sources=[n for n, _ in numbered], error=None)
        event = step | {"sources": [{"n": n, **source} for n, source in numbered]}
        return ToolMessage(format_results(numbered), tool_call_id=call["id"], artifact=event)


model = make_chat_model(
    openai_api_key=OPENAI_API_KEY,
    model_name=MODEL_NAME,
    offline_token_delay_ms=int(os.getenv("OFFLINE_TOKEN_DELAY_MS", "15")),
    offline_model=OfflineResearchModel,
)
# The loop: the model answers or asks for tool calls; the tools run; the model reads their results.
agent = create_agent(
    model,
    [search_docs],
    system_prompt=SYSTEM_PROMPT,
    middleware=[SearchToolMiddleware()],
)


def result(query: str, messages: list[BaseMessage], run: Run) -> dict:
    """A finished run's answer: the model's last text, and the searches and sources of `run`."""
    replies = [m for m in messages if isinstance(m, AIMessage)]
    usage = [m.usage_metadata for m in replies if m.usage_metadata]
    return {
        "query": query,
        "response": replies[-1].text,
        "steps": run.steps,
        "sources": run.sources,
        "model": MODEL_NAME,
        "tokens_used": sum(u["input_tokens"] + u["output_tokens"] for u in usage),
    }


async def research(query: str) -> dict:
    run = Run()
    state = await agent.ainvoke({"messages": [HumanMessage(query)]}, context=run)
    return result(query, state["messages"], run)


if __name__ == "__main__":
    answer = asyncio.run(research(QUESTION))
    print(answer["response"], end="\n\n")
    for n, source in enumerate(answer["sources"], 1):
        print(f"[{n}] {source['title']}: {source['url']}")
    for step in answer["steps"]:
        print(f"{step['tool']}({step['input']!r}): {step['status']}, sources {step['sources']}")
    print(f"({answer['model']}, {answer['tokens_used']} tokens)")
