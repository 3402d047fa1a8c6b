"""Lesson 02's pydantic models: the bodies the API receives and sends, and the events of its
stream (also the OpenAPI schema shown at /docs). The agent's settings are in
research_agent/settings.py, with every other setting of the service.
"""

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Json

from .web.error_shape import ErrorResponse

# --- Request and response bodies -----------------------------------------------------------------

MAX_QUERY_CHARS = 2000

# The limits apply to what the client sent (a 2,002-character query padded with spaces is too long),
# and the schema says exactly that: 3 to 2000 characters, at least one of them not whitespace.
# Only then is the text stripped for the agent.
Query = Annotated[
    str,
    Field(
        min_length=3,
        max_length=MAX_QUERY_CHARS,
        # At least one character that is not whitespace, and no NUL anywhere.
        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
        examples=["Why use a multi-stage Docker build?"],
    ),
    AfterValidator(str.strip),
]


class ResearchRequest(BaseModel):
    # strict: no coercion (a number is not a query); forbid: a misspelt field is an error.
    model_config = ConfigDict(extra="forbid", strict=True)

    query: Query


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
    cache: Literal["redis", "bypassed", "disabled"] = Field(
        description="redis: in use; bypassed: Redis failed, skipped until a probe succeeds "
        "(still ready: the cache is an optimisation); disabled: no REDIS_URL"
    )


# --- The SSE protocol of /v1/research/stream, one model per event --------------------------------
# Each `data:` line is a JSON string on the wire: Json[...] makes the schema say so (type string,
# contentMediaType application/json, contentSchema: the object), and validation mode keeps that form
# in the response schema. The unnamed last event is "message" by the SSE rules.


class NumberedSource(Source):
    n: int = Field(description="The number the answer cites it by, [n]")


class ToolError(BaseModel):
    type: Literal["search_timeout", "search_unavailable", "tool_error"]
    message: str


class ToolEvent(BaseModel):
    tool: str
    input: str | None
    status: Literal["success", "error"]
    sources: list[NumberedSource]
    error: ToolError | None


class TokenEvent(BaseModel):
    text: str


class _Frame(BaseModel):
    model_config = ConfigDict(json_schema_mode_override="validation")


class ToolFrame(_Frame):
    event: Literal["tool"]
    data: Json[ToolEvent]


class TokenFrame(_Frame):
    event: Literal["token"]
    data: Json[TokenEvent]


class FinalFrame(_Frame):
    event: Literal["final"]
    data: Json[ResearchResponse]


class ErrorFrame(_Frame):
    event: Literal["error"]
    data: Json[ErrorResponse]


class DoneFrame(_Frame):
    event: Literal["message"]
    data: Literal["[DONE]"]


StreamEvent = Annotated[
    ToolFrame | TokenFrame | FinalFrame | ErrorFrame | DoneFrame, Field(discriminator="event")
]
