"""What each run of the agent used, counted while it runs: the token budgets of docs/02 section 8
charge it to the caller (research_agent/access/quotas.py), and `agent_tokens_total` adds it up.

A model reports its usage only at the end of each call. A stream cut during a call never sees that
report: uncounted, a cut run's largest prompt went free (72 input tokens charged instead of 352),
and 15 cut runs fit a 2,000-token budget. So a call's input counts from the moment it is sent
(estimated, or the model's own count where it has one, the offline model's), each text chunk
streamed counts as one output token, and the model's own figures replace both when it reports.

`Counted` wraps the agent for one request (research_agent/deps.py builds it): the routes' service
runs it as it would run the agent.
"""

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage

from ..agent import AroundAgent, Runs
from ..observability.metrics import TOKENS

# Adds an answer's tokens to the caller's budget (research_agent/access/quotas.py, Grant.spend).
Spend = Callable[[int], Awaitable[None]]


async def no_budget(tokens: int) -> None:
    pass


@dataclass
class TokenCount:
    """The tokens a run has used so far, kept as its chunks arrive: what a caller who leaves before
    `final` is charged."""

    input: int = 0
    output: int = 0
    unreported: int = 0  # text chunks streamed by the call under way
    # The estimated input of each call sent and not reported on yet, oldest first.
    sent: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.input + sum(self.sent) + self.output + self.unreported

    def settle(self, usage: dict) -> None:
        """A call reported its usage: it replaces the call's estimates."""
        self.input += usage.get("input_tokens", 0)
        self.output += usage.get("output_tokens", 0)
        self.unreported = 0
        if self.sent:
            self.sent.pop(0)


def estimate_input_tokens(messages: list[BaseMessage]) -> int:
    """About four characters a token, plus a few for each message's role: what a model that has
    not reported its usage yet is charged for the prompt it was sent."""
    return sum(len(m.text) // 4 + 4 for m in messages)


class UsageCounter(AsyncCallbackHandler):
    """Counts one run's tokens into `used`, call by call, as LangChain reports them."""

    def __init__(self, used: TokenCount, count: Callable[[list[BaseMessage]], int]):
        self.used, self.count = used, count

    async def on_chat_model_start(self, serialized, messages, **kwargs) -> None:
        self.used.sent.append(sum(self.count(batch) for batch in messages))

    async def on_llm_new_token(self, token, *, chunk=None, **kwargs) -> None:
        message = getattr(chunk, "message", None)
        if message is not None and message.text and not message.usage_metadata:
            self.used.unreported += 1

    async def on_llm_end(self, response, **kwargs) -> None:
        for generation in (g for batch in response.generations for g in batch):
            message = getattr(generation, "message", None)
            if isinstance(message, AIMessage) and message.usage_metadata:
                self.used.settle(message.usage_metadata)


class Counted(AroundAgent):
    """The agent, each run counted in `agent_tokens_total` and charged with `spend`: a run that
    ends is charged its `tokens_used`; one that fails, times out or loses its caller what it made
    so far (a provider bills it). A cached answer never runs the agent, so it costs nothing."""

    def __init__(self, agent: Runs, spend: Spend = no_budget):
        super().__init__(agent)
        self.spend = spend
        # The model's own count where it has one (the offline model's), an estimate otherwise.
        model = getattr(agent, "model", None)
        self.count_input = getattr(model, "count_input_tokens", estimate_input_tokens)

    def _add_to_metrics(self, used: TokenCount) -> None:
        TOKENS.labels(self.model_label, "input").inc(used.input + sum(used.sent))
        TOKENS.labels(self.model_label, "output").inc(used.output + used.unreported)

    async def research(self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()) -> dict:
        used = TokenCount()
        try:
            result = await self.agent.research(
                query, [*callbacks, UsageCounter(used, self.count_input)]
            )
        except BaseException:
            # Shielded: a cancelled request is one of the runs that failed.
            with anyio.CancelScope(shield=True):
                await self.spend(used.total)
            raise
        self._add_to_metrics(used)
        await self.spend(result["tokens_used"])
        return result

    async def stream(
        self, query: str, callbacks: Sequence[BaseCallbackHandler] = ()
    ) -> AsyncIterator[tuple[str, dict]]:
        used, paid = TokenCount(), False
        try:
            counter = UsageCounter(used, self.count_input)
            async for name, data in self.agent.stream(query, [*callbacks, counter]):
                if name == "final":
                    paid = True
                    await self.spend(data["tokens_used"])
                yield name, data
        finally:
            self._add_to_metrics(used)  # finished or not: what was made still counts
            if not paid and used.total:
                # Shielded: the stream's own task is being cancelled.
                with anyio.CancelScope(shield=True):
                    await self.spend(used.total)
