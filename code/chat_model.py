"""The chat model behind every lesson script.

With OPENAI_API_KEY set you get `ChatOpenAI` (OPENAI_BASE_URL points it at any OpenAI-compatible
server such as Ollama or vLLM). Without a key you get `OfflineChatModel`: deterministic, no network,
streamed token by token. Both are LangChain chat models, so the lesson code never branches on mode.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

logger = logging.getLogger("chat_model")

OFFLINE_MODEL_NAME = "offline-model"


class OfflineChatModel(BaseChatModel):
    """Answers without a network: it restates the question and says what it is."""

    model_name: str = OFFLINE_MODEL_NAME
    token_delay_ms: int = 20
    """Pause before each token: streaming shows, and tests can make requests slow on purpose."""

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
        # Deterministic, so temperature has nothing to change; max_tokens truncates the answer.
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


def make_chat_model(
    openai_api_key: str | None,
    model_name: str = "gpt-4o-mini",
    offline_token_delay_ms: int = 20,
    timeout_seconds: float | None = None,
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
    return OfflineChatModel(token_delay_ms=offline_token_delay_ms)
