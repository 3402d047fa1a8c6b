"""The chat model behind every lesson script.

With OPENAI_API_KEY set you get `ChatOpenAI` (OPENAI_BASE_URL points it at any OpenAI-compatible
server such as Ollama or vLLM). Without a key you get `OfflineChatModel`: deterministic, no network,
streamed token by token. Both are LangChain chat models, so the lesson code never branches on mode.
"""

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool

logger = logging.getLogger("chat_model")

OFFLINE_MODEL_NAME = "offline-model"


class OfflineChatModel(BaseChatModel):
    """Answers without a network: it restates the question and says what it is."""

    model_name: str = OFFLINE_MODEL_NAME
    token_delay_ms: int = 20
    """Pause before each token: streaming is visible, and tests can slow requests on purpose."""

    @property
    def _llm_type(self) -> str:
        return "offline"

    def _tokens(self, messages: list[BaseMessage], max_tokens: int | None) -> list[str]:
        question = messages[-1].text if messages else ""
        answer = (
            f"[offline model] You asked: {question.strip()} - I am the course's offline model: "
            "I need no network and give the same answer every time. "
            "Set OPENAI_API_KEY to talk to a real model."
        )
        words = answer.split(" ")
        tokens = [word if i == 0 else " " + word for i, word in enumerate(words)]
        return tokens[:max_tokens] if max_tokens else tokens

    def _chunks(self, messages: list[BaseMessage], kwargs: dict) -> Iterator[AIMessageChunk]:
        # Deterministic: temperature has nothing to change; max_tokens truncates.
        tokens = self._tokens(messages, kwargs.get("max_tokens"))
        for token in tokens:
            yield AIMessageChunk(content=token)
        prompt_tokens = sum(len(m.text.split()) for m in messages)
        yield AIMessageChunk(
            content="",
            usage_metadata={
                "input_tokens": prompt_tokens,
                "output_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
            response_metadata={"model_name": self.model_name},
        )

    def _stream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs):
            if chunk.content:
                time.sleep(self.token_delay_ms / 1000)
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self, messages, stop=None, run_manager=None, **kwargs
    ) -> AsyncIterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, kwargs):
            if chunk.content:
                await asyncio.sleep(self.token_delay_ms / 1000)
                if run_manager:
                    await run_manager.on_llm_new_token(
                        chunk.text, chunk=ChatGenerationChunk(message=chunk)
                    )
            yield ChatGenerationChunk(message=chunk)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = sum(self._chunks(messages, kwargs), AIMessageChunk(content=""))
        time.sleep(self.token_delay_ms * message.usage_metadata["output_tokens"] / 1000)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        message = sum(self._chunks(messages, kwargs), AIMessageChunk(content=""))
        await asyncio.sleep(self.token_delay_ms * message.usage_metadata["output_tokens"] / 1000)
        return ChatResult(generations=[ChatGeneration(message=message)])


# Arithmetic written with digits and + - * / % ** ( ), e.g. "2**100" or "(17 + 4) * 3".
ARITHMETIC = re.compile(r"[\d(][\d\s+\-*/%().]*[\d)]")


class OfflineToolCallingModel(OfflineChatModel):
    """The offline model with one tool: it has arithmetic in the question computed by that tool.

    Deterministic, like OfflineChatModel: when the question holds arithmetic, the first turn calls
    the bound tool with a program that prints the first expression ({"code": "print(2**100)"});
    the next turn answers from the tool's result. Other questions get OfflineChatModel's answer.
    """

    tool_name: str | None = None

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "OfflineToolCallingModel":
        names = [convert_to_openai_tool(t)["function"]["name"] for t in tools]
        return self.model_copy(update={"tool_name": names[0] if names else None})

    @staticmethod
    def expression(question: str) -> str | None:
        found = [m.strip() for m in ARITHMETIC.findall(question) if re.search(r"[-+*/%]", m)]
        return found[0] if found else None

    def _chunks(self, messages: list[BaseMessage], kwargs: dict) -> Iterator[AIMessageChunk]:
        human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
        expression = self.expression(messages[human].text) if human >= 0 else None
        results = [m for m in messages[human + 1 :] if isinstance(m, ToolMessage)]
        if not (self.tool_name and expression):
            yield from super()._chunks(messages, kwargs)
            return
        usage = {"input_tokens": sum(len(m.text.split()) for m in messages)}
        if not results:
            call = {"name": self.tool_name, "args": json.dumps({"code": f"print({expression})"})}
            yield AIMessageChunk(
                content="", tool_call_chunks=[{**call, "id": f"call_{len(messages)}", "index": 0}]
            )
            usage["output_tokens"] = 1
        else:
            for token in self._answer(expression, results[-1]).split(" "):
                yield AIMessageChunk(content=token + " ")
            usage["output_tokens"] = len(self._answer(expression, results[-1]).split(" "))
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        yield AIMessageChunk(
            content="", usage_metadata=usage, response_metadata={"model_name": self.model_name}
        )

    @staticmethod
    def _answer(expression: str, result: ToolMessage) -> str:
        # A person may have replaced the program before it ran (lesson 10): the tool's answer then
        # follows a note saying so, and the output is not the question's expression any more.
        note, edited, text = result.text.rpartition("Tool response:\n")
        try:
            run = json.loads(text)
        except ValueError:
            return f"[offline model] I could not compute {expression}: {result.text}"
        if run.get("exit_code") == 0 and not run.get("truncated") and edited:
            return f"[offline model] The reviewed program printed {run['stdout'].strip()}"
        if run.get("exit_code") == 0 and not run.get("truncated"):
            return f"[offline model] {expression} = {run['stdout'].strip()} (run in the sandbox)"
        reason = "timed out" if run.get("timed_out") else f"exited with {run.get('exit_code')}"
        error = ((run.get("stderr") or "").strip().splitlines() or [""])[-1]
        return f"[offline model] Computing {expression} failed: the run {reason}. {error}".strip()


def make_chat_model(
    openai_api_key: str | None,
    model_name: str = "gpt-4o-mini",
    offline_token_delay_ms: int = 20,
    timeout_seconds: float | None = None,
    offline_model: type[BaseChatModel] = OfflineChatModel,  # any model taking token_delay_ms
) -> BaseChatModel:
    """A real model when a key is configured, the offline model otherwise."""
    if openai_api_key:
        from langchain_openai import ChatOpenAI

        logger.info(
            "Using %s through the OpenAI API (OPENAI_BASE_URL overrides the endpoint)", model_name
        )
        # stream_usage: with a custom base URL ChatOpenAI would otherwise stream no token counts.
        return ChatOpenAI(
            model=model_name, api_key=openai_api_key, timeout=timeout_seconds, stream_usage=True
        )
    logger.info(
        "No OPENAI_API_KEY: using the offline model. Set OPENAI_API_KEY (and OPENAI_BASE_URL for "
        "Ollama, vLLM or llama.cpp) to use a real model."
    )
    return offline_model(token_delay_ms=offline_token_delay_ms)
