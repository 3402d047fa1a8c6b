"""Deterministic stand-ins for an LLM, so the research agent and the lessons run without a key or
network.

`OfflineModel` is the course's one family of offline chat models: a subclass says what its next
message is (an `OfflineReply`: the tokens it streams, or a tool call), and the base class makes a
LangChain chat model of it (streamed token by token, usage reported, one token a word of the
prompt). `OfflineResearchModel` below is the research agent's; lesson 01's `OfflineChatModel` and
lesson 04's `OfflineToolCallingModel` (code/chat_model.py) are `PacedOfflineModel`s.

The agent (research_agent/agent.py) runs `OfflineResearchModel` through the same loop, tools and
middleware as ChatOpenAI. (Lesson 05's worker gives it a style and a temperature:
research_agent/worker/styles.py.)
"""

import asyncio
import hashlib
import json
import re
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

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

from .settings import OFFLINE_MODEL_NAME

HEADER = "Offline research model (no OPENAI_API_KEY is set, so no LLM wrote this): "


class OfflineReply(NamedTuple):
    """An offline model's next message: `text`, streamed as `tokens`, or a tool call."""

    text: str = ""
    tokens: Sequence[str] = ()
    call: dict | None = None  # {"name": ..., "args": {...}, "id": ...}
    output_tokens: int | None = None  # what its usage reports; one a token when not given


class OfflineModel(BaseChatModel):
    """A chat model whose answers a subclass computes (`_reply`): no network, the same every time.

    A stream sends the reply's tokens, ``token_delay_ms`` apart when it is set, then the tool call
    if there is one, then the usage. A whole answer (``invoke``, the research agent's JSON route)
    comes at once: the delay only makes a stream visible.
    """

    token_delay_ms: int = 0

    @abstractmethod
    def _reply(self, messages: list[BaseMessage], max_tokens: int | None) -> OfflineReply:
        """The next message, for this conversation."""

    @staticmethod
    def count_input_tokens(messages: list[BaseMessage]) -> int:
        """One token a word, as its usage reports (the agent counts a prompt with it when sent)."""
        return sum(len(m.text.split()) for m in messages)

    @staticmethod
    def first_tool_name(tools: Sequence[Any]) -> str | None:
        """The tool an offline model calls: the first one bound."""
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return names[0] if names else None

    @property
    def _model_name(self) -> str:
        """The model name its responses report."""
        return self._llm_type

    def _pause(self) -> float | None:
        """Seconds before each streamed token; None: none at all, not even a turn of the loop."""
        return self.token_delay_ms / 1000 if self.token_delay_ms else None

    def _usage_of(self, messages: list[BaseMessage], reply: OfflineReply) -> dict:
        output_tokens = len(reply.tokens) if reply.output_tokens is None else reply.output_tokens
        return _usage(self.count_input_tokens(messages), output_tokens)

    def _chunks(self, messages: list[BaseMessage], kwargs: dict) -> Iterator[AIMessageChunk]:
        reply = self._reply(messages, kwargs.get("max_tokens"))
        for token in reply.tokens:
            yield AIMessageChunk(content=token)
        if reply.call:
            name, args, call_id = reply.call["name"], reply.call["args"], reply.call["id"]
            tool_chunk = {"name": name, "args": json.dumps(args), "id": call_id, "index": 0}
            yield AIMessageChunk(content="", tool_call_chunks=[tool_chunk])
        yield AIMessageChunk(
            content="",
            usage_metadata=self._usage_of(messages, reply),
            response_metadata={"model_name": self._model_name},
        )

    def _message(self, messages: list[BaseMessage], kwargs: dict) -> AIMessage:
        reply = self._reply(messages, kwargs.get("max_tokens"))
        return AIMessage(
            content=reply.text,
            tool_calls=[reply.call] if reply.call else [],
            usage_metadata=self._usage_of(messages, reply),
            response_metadata={"model_name": self._model_name},
        )

    def _generate(
        self, messages, stop=None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(messages, kwargs))])

    def _stream(
        self, messages, stop=None, run_manager: CallbackManagerForLLMRun | None = None, **kwargs
    ) -> Iterator[ChatGenerationChunk]:
        pause = self._pause()
        for message in self._chunks(messages, kwargs):
            chunk = ChatGenerationChunk(message=message)
            if message.content:
                if pause is not None:
                    time.sleep(pause)
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages,
        stop=None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs,
    ):
        pause = self._pause()
        for message in self._chunks(messages, kwargs):
            chunk = ChatGenerationChunk(message=message)
            if message.content:
                if pause is not None:
                    await asyncio.sleep(pause)
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk


class PacedOfflineModel(OfflineModel):
    """An offline model each token of which takes ``token_delay_ms``, in a stream or a whole
    answer alike, and a pause of 0 ms too (a turn of the event loop): lesson 01's tests slow any
    request by slowing its model.

    A whole answer is what its stream adds up to (an AIMessageChunk), after the stream's time.
    """

    def _pause(self) -> float:
        return self.token_delay_ms / 1000

    def _streamed(self, messages: list[BaseMessage], kwargs: dict) -> AIMessageChunk:
        return sum(self._chunks(messages, kwargs), AIMessageChunk(content=""))

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = self._streamed(messages, kwargs)
        time.sleep(self.token_delay_ms * message.usage_metadata["output_tokens"] / 1000)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = self._streamed(messages, kwargs)
        await asyncio.sleep(self.token_delay_ms * message.usage_metadata["output_tokens"] / 1000)
        return ChatResult(generations=[ChatGeneration(message=message)])


class OfflineResearchModel(OfflineModel):
    """The research agent's offline model.

    Turn 1: calls the bound search tool with the user's question. Turn 2: quotes the snippets of the
    top results, citing them [1], [2]... It streams word by word (``token_delay_ms`` apart) and
    reports usage, counting one token per word.
    """

    tool_name: str | None = None
    max_cited: int = 3

    @property
    def _llm_type(self) -> str:
        return OFFLINE_MODEL_NAME

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "OfflineResearchModel":
        return self.model_copy(update={"tool_name": self.first_tool_name(tools)})

    def _reply(self, messages: list[BaseMessage], max_tokens: int | None) -> OfflineReply:
        text, call, usage = self._plan(messages)
        return OfflineReply(text, _tokens(text), call, usage["output_tokens"])

    # The plan for this turn: (text, tool call or None, usage). Lesson 11's eval model extends it.
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
