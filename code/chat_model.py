"""The chat model behind every lesson script.

With OPENAI_API_KEY set you get `ChatOpenAI` (OPENAI_BASE_URL points it at any OpenAI-compatible
server such as Ollama or vLLM). Without a key you get `OfflineChatModel`: deterministic, no network,
streamed token by token. Both are LangChain chat models, so the lesson code never branches on mode.

The offline models here say what they answer; the research agent's offline family
(research_agent/offline_model.py, the one lesson 02's `OfflineResearchModel` belongs to) makes a
LangChain chat model of that: the stream, the pauses, the usage, the tool calls.
"""

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage, ToolMessage

from research_agent import OfflineReply, PacedOfflineModel

logger = logging.getLogger("chat_model")

OFFLINE_MODEL_NAME = "offline-model"


class OfflineChatModel(PacedOfflineModel):
    """Answers without a network: it restates the question and says what it is."""

    model_name: str = OFFLINE_MODEL_NAME
    token_delay_ms: int = 20
    """Pause before each token: streaming is visible, and tests can slow requests on purpose."""

    @property
    def _llm_type(self) -> str:
        return "offline"

    @property
    def _model_name(self) -> str:
        return self.model_name

    def _reply(self, messages: list[BaseMessage], max_tokens: int | None) -> OfflineReply:
        # Deterministic: temperature has nothing to change; max_tokens truncates.
        question = messages[-1].text if messages else ""
        answer = (
            f"[offline model] You asked: {question.strip()} - I am the course's offline model: "
            "I need no network and give the same answer every time. "
            "Set OPENAI_API_KEY to talk to a real model."
        )
        words = answer.split(" ")
        tokens = [word if i == 0 else " " + word for i, word in enumerate(words)]
        tokens = tokens[:max_tokens] if max_tokens else tokens
        return OfflineReply("".join(tokens), tokens)


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
        return self.model_copy(update={"tool_name": self.first_tool_name(tools)})

    @staticmethod
    def expression(question: str) -> str | None:
        found = [m.strip() for m in ARITHMETIC.findall(question) if re.search(r"[-+*/%]", m)]
        return found[0] if found else None

    def _reply(self, messages: list[BaseMessage], max_tokens: int | None) -> OfflineReply:
        human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
        expression = self.expression(messages[human].text) if human >= 0 else None
        results = [m for m in messages[human + 1 :] if isinstance(m, ToolMessage)]
        if not (self.tool_name and expression):
            return super()._reply(messages, max_tokens)
        if not results:
            code = {"code": f"print({expression})"}
            call = {"name": self.tool_name, "args": code, "id": f"call_{len(messages)}"}
            return OfflineReply(call=call, output_tokens=1)
        tokens = [word + " " for word in self._answer(expression, results[-1]).split(" ")]
        return OfflineReply("".join(tokens), tokens)

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
