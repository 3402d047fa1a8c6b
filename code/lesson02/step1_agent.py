"""Lesson 02, step 1: an agent that searches the course's notes, then answers citing them.

Run it:  make lesson-02 STEP=1     (another question: QUESTION="..." make lesson-02 STEP=1)
"""

import asyncio
import os

from langchain.agents import create_agent
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

# BM25 over each section of the Markdown notes in research-agent/notes/, indexed once, at start.
notes = LocalSearch([BUNDLED_NOTES_DIR])


@tool(response_format="content_and_artifact")
def search_docs(query: str) -> tuple[str, list[dict]]:
    """Search the course documentation and notes about containers, Docker and deploying AI
    agents. Input: a search query. Returns numbered passages with their file paths."""
    sources = notes.search(query, SEARCH_MAX_RESULTS)  # [{"title", "url", "snippet"}, ...]
    # The model reads the text; the sources travel with it, as the ToolMessage's artifact.
    return format_results(list(enumerate(sources, 1))), sources


model = make_chat_model(
    openai_api_key=OPENAI_API_KEY,
    model_name=MODEL_NAME,
    offline_token_delay_ms=int(os.getenv("OFFLINE_TOKEN_DELAY_MS", "15")),
    offline_model=OfflineResearchModel,
)
# The loop: the model answers or asks for tool calls; the tools run; the model reads their results.
agent = create_agent(model, [search_docs], system_prompt=SYSTEM_PROMPT)


def result(query: str, messages: list[BaseMessage]) -> dict:
    """A finished run's answer: the model's last text, and the sources its searches found."""
    replies = [m for m in messages if isinstance(m, AIMessage)]
    usage = [m.usage_metadata for m in replies if m.usage_metadata]
    return {
        "query": query,
        "response": replies[-1].text,
        "sources": [s for m in messages if isinstance(m, ToolMessage) for s in m.artifact],
        "model": MODEL_NAME,
        "tokens_used": sum(u["input_tokens"] + u["output_tokens"] for u in usage),
    }


async def research(query: str) -> dict:
    state = await agent.ainvoke({"messages": [HumanMessage(query)]})
    return result(query, state["messages"])


if __name__ == "__main__":
    answer = asyncio.run(research(QUESTION))
    print(answer["response"], end="\n\n")
    for n, source in enumerate(answer["sources"], 1):
        print(f"[{n}] {source['title']}: {source['url']}")
    print(f"({answer['model']}, {answer['tokens_used']} tokens)")
