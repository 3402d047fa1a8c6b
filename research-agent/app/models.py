"""Request and response bodies (they are also the OpenAPI schema shown at /docs)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_QUERY_CHARS = 2000


class ResearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    query: str = Field(
        min_length=3, max_length=MAX_QUERY_CHARS, examples=["Why use a multi-stage Docker build?"]
    )


class Source(BaseModel):
    title: str
    url: str
    snippet: str


class Step(BaseModel):
    """One tool call made by the agent."""

    tool: str
    input: str
    status: Literal["success", "error"]
    sources: list[int] = Field(
        default_factory=list, description="Numbers of the sources it found, as cited [n]"
    )
    error: str | None = None


class ResearchResponse(BaseModel):
    query: str
    response: str
    steps: list[Step]
    sources: list[Source]
    model: str
    tokens_used: int = Field(
        description="Tokens spent by this request (0 when served from the cache)"
    )
    cached: bool = False
    request_id: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    model: str
    search_backend: str


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: str
    search_backend: str
    cache: Literal["redis", "disabled"]


class ErrorDetail(BaseModel):
    type: str
    message: str
    request_id: str
    details: list[dict] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
