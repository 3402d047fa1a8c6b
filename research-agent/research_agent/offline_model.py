"""A deterministic stand-in for an LLM, so the research agent runs without a key or network.

The agent (research_agent/agent.py) runs it through the same loop, tools and middleware as
ChatOpenAI. (Lesson 05's worker gives it a style and a temperature:
research_agent/worker/styles.py.)
"""

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

from .schemas import OFFLINE_MODEL_NAME

HEADER = "Offline research model (no OPENAI_API_KEY is set, so no LLM wrote this): "


class OfflineResearchModel(BaseChatModel):
    """A deterministic stand-in for an LLM, so the agent runs without a key or network.

    Turn 1: calls the bound search tool with the user's question. Turn 2: quotes the snippets of the
    top results, citing them [1], [2]... It streams word by word (``token_delay_ms`` apart) and
    reports usage, counting one token per word.
    """

    token_delay_ms: int = 0
    tool_name: str | None = None
    max_cited: int = 3

    @property
    def _llm_type(self) -> str:
        return OFFLINE_MODEL_NAME

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "OfflineResearchModel":
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self.model_copy(update={"tool_name": names[0] if names else None})

    @staticmethod
    def count_input_tokens(messages: list[BaseMessage]) -> int:
        """One token a word, as its usage reports (the agent counts a prompt with it when sent)."""
        return sum(len(m.text.split()) for m in messages)

    # The plan for this turn: (text, tool call or None, usage).
    def _plan(self, messages: list[BaseMessage]) -> tuple[str, dict | None, dict]:
        last_human = max(
            (i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1
        )
        question = messages[last_human].text if last_human >= 0 else ""
        results = [m for m in messages[last_human + 1 :] if isinstance(m, ToolMessage)]
        input_tokens = self.count_input_tokens(messages)
        if not results and self.tool_name:
            call_id = "call_" + hashlib.sha1(question.encode()).hexdigest()[:12]
            call = {"name": self.tool_name, "args": {"query": question}, "id": call_id}
            return "", call, _usage(input_tokens, len(question.split()) + 3)
        text = self._answer(results, question)
        return text, None, _usage(input_tokens, len(_tokens(text)))

    def _answer(self, results: list[ToolMessage], question: str = "") -> str:
        found = found_sources(results)
        if not found:
            return no_sources(results)
        lines = [f"- {snippet} [{n}]" for n, _, snippet in found[: self.max_cited]]
        return HEADER + "here is what the top sources say.\n\n" + "\n".join(lines)

    def _message(self, messages: list[BaseMessage]) -> AIMessage:
        text, call, usage = self._plan(messages)
        return AIMessage(
            content=text,
            tool_calls=[call] if call else [],
            usage_metadata=usage,
            response_metadata={"model_name": OFFLINE_MODEL_NAME},
        )

    def _chunks(self, messages: list[BaseMessage]) -> Iterator[ChatGenerationChunk]:
        text, call, usage = self._plan(messages)
        for token in _tokens(text):
            yield ChatGenerationChunk(message=AIMessageChunk(content=token))
        if call:
            tool_chunk = {
                "name": call["name"],
                "args": json.dumps(call["args"]),
                "id": call["id"],
                "index": 0,
            }
            yield ChatGenerationChunk(
                message=AIMessageChunk(content="", tool_call_chunks=[tool_chunk])
            )
        last = AIMessageChunk(
            content="", usage_metadata=usage, response_metadata={"model_name": OFFLINE_MODEL_NAME}
        )
        yield ChatGenerationChunk(message=last)

    def _generate(
        self, messages, stop=None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs
    ):
        return ChatResult(generations=[ChatGeneration(message=self._message(messages))])

    def _stream(
        self, messages, stop=None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs
    ):
        for chunk in self._chunks(messages):
            if chunk.message.content and self.token_delay_ms:
                time.sleep(self.token_delay_ms / 1000)
            if run_manager and chunk.message.content:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages,
        stop=None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs,
    ):
        for chunk in self._chunks(messages):
            if chunk.message.content and self.token_delay_ms:
                await asyncio.sleep(self.token_delay_ms / 1000)
            if run_manager and chunk.message.content:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


def found_sources(results: list[ToolMessage]) -> list[tuple[str, str, str]]:
    """(n, title, snippet) of each search result, as format_results wrote them."""
    found = []
    for message in results:
        if message.status != "error":
            found += re.findall(r"^\[(\d+)\] (.+?) — .+\n(.+)$", message.text, flags=re.M)
    return found


def no_sources(results: list[ToolMessage]) -> str:
    errors = " ".join(m.text for m in results if m.status == "error")
    return (
        HEADER
        + "the search found no usable sources, so I cannot answer from sources."
        + (f" {errors}" if errors else "")
    )


def _usage(input_tokens: int, output_tokens: int) -> dict:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


def _tokens(text: str) -> list[str]:
    return re.findall(r"\s*\S+", text)
