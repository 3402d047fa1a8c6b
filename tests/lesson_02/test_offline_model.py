"""The offline chat model on its own, and inside create_agent."""

import asyncio

from langchain_core.messages import HumanMessage, ToolMessage

from research_agent.agent import ResearchAgent
from research_agent.offline_model import OfflineResearchModel
from research_agent.search import LocalSearch, format_results, make_local_tool, tokenize
from support.lessons import AGENT_DIR
from tests.support.agent import make_settings


def search_tool_schema():
    return make_local_tool(make_settings())


def test_first_turn_calls_the_bound_search_tool_with_the_question():
    model = OfflineResearchModel().bind_tools([search_tool_schema()])
    message = model.invoke([HumanMessage("What is a health check?")])
    assert message.content == ""
    assert message.tool_calls[0]["name"] == "search_docs"
    assert message.tool_calls[0]["args"] == {"query": "What is a health check?"}
    assert message.usage_metadata["total_tokens"] > 0


def test_second_turn_quotes_the_results_and_cites_them():
    model = OfflineResearchModel().bind_tools([search_tool_schema()])
    results = format_results(
        [
            (
                1,
                {"title": "A", "url": "notes/a.md", "snippet": "Alpha is first. More about alpha."},
            ),
            (2, {"title": "B", "url": "notes/b.md", "snippet": "Beta is second."}),
        ]
    )
    history = [
        HumanMessage("q?"),
        model.invoke([HumanMessage("q?")]),
        ToolMessage(results, tool_call_id="call_1"),
    ]
    answer = model.invoke(history)
    assert answer.tool_calls == []
    assert answer.content.startswith("Offline research model (no OPENAI_API_KEY is set")
    assert "- Alpha is first. More about alpha. [1]\n- Beta is second. [2]" in answer.content


def test_it_is_deterministic():
    model = OfflineResearchModel().bind_tools([search_tool_schema()])
    first, second = (model.invoke([HumanMessage("same question")]) for _ in range(2))
    assert (first.content, first.tool_calls, first.usage_metadata) == (
        second.content,
        second.tool_calls,
        second.usage_metadata,
    )


def test_failed_search_is_admitted_not_invented():
    model = OfflineResearchModel().bind_tools([search_tool_schema()])
    history = [
        HumanMessage("q?"),
        ToolMessage("Error: the search failed (boom).", tool_call_id="c", status="error"),
    ]
    assert "no usable sources" in model.invoke(history).content


def test_streams_word_by_word_with_the_configured_delay(monkeypatch):
    delays = []

    async def record_sleep(seconds):
        delays.append(seconds)

    monkeypatch.setattr("research_agent.offline_model.asyncio.sleep", record_sleep)
    model = OfflineResearchModel(token_delay_ms=25).bind_tools([search_tool_schema()])
    history = [
        HumanMessage("q?"),
        ToolMessage(
            format_results([(1, {"title": "A", "url": "u", "snippet": "One two three."})]),
            tool_call_id="c",
        ),
    ]

    async def collect():
        return [chunk async for chunk in model.astream(history)]

    chunks = asyncio.run(collect())
    words = [c.content for c in chunks if c.content]
    assert len(words) > 5 and delays == [0.025] * len(words)
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert whole.usage_metadata["output_tokens"] == len(words)


def test_the_agent_loop_is_search_then_answer():
    agent = ResearchAgent(make_settings())
    result = asyncio.run(agent.research("What does docker stop send?"))
    assert [s["tool"] for s in result["steps"]] == ["search_docs"]
    assert result["sources"][0]["url"] == "notes/graceful-shutdown.md#what-happens-on-docker-stop"
    assert "SIGTERM" in result["response"] and "[1]" in result["response"]


def test_local_search_ranks_the_relevant_note_first():
    index = LocalSearch([AGENT_DIR / "notes"])
    assert len(index.sections) >= 15
    top = index.search("run as non-root user", 3)
    assert top[0]["url"] == "notes/dockerfile-basics.md#run-as-a-non-root-user"
    assert index.search("the of and", 3) == []  # only stopwords
    assert LocalSearch([]).search("anything", 3) == []


def test_tokenize_folds_plurals_and_drops_stopwords():
    assert tokenize("Why use multi-stage builds?") == ["multi", "stage", "build"]
