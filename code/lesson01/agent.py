"""Lesson 01: the agent every step serves, a prompt and a chat model (docs/01-agent-api.md, step 1).

The routes of code/lesson01/step*.py talk to `Agent`, never to the model, so they stay the same
whatever the model is: the offline one, or a real one when OPENAI_API_KEY is set
(code/chat_model.py)."""

from collections.abc import AsyncIterator

from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field


class AgentRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000, description="The question for the agent")


class AgentResponse(BaseModel):
    response: str
    tokens_used: int
    model: str


PROMPT = ChatPromptTemplate.from_messages(
    [("system", "You are a helpful assistant. Be concise and accurate."), ("human", "{query}")]
)


class Agent:
    """A prompt and a chat model: the whole answer, or the answer token by token."""

    def __init__(self, model: BaseChatModel):
        self.model_name = model.model_name
        self.chain = PROMPT | model

    async def invoke(self, request: AgentRequest) -> AgentResponse:
        message = await self.chain.ainvoke({"query": request.query})
        usage = message.usage_metadata or {}  # filled alike by every provider LangChain supports
        tokens = usage.get("total_tokens", 0)
        return AgentResponse(response=message.text, tokens_used=tokens, model=self.model_name)

    async def stream(self, request: AgentRequest) -> AsyncIterator[str]:
        async for chunk in self.chain.astream({"query": request.query}):
            if chunk.text:  # the last chunk carries only the usage
                yield chunk.text
