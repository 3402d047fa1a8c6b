"""Lesson 02's pydantic models: the agent's settings, read from environment variables, and the
bodies the API receives and sends (also the OpenAPI schema shown at /docs).

The settings here are those lesson 02's core reads. The service adds those of its later layers
(keys and limits, the cache, the shutdown budget, the sandbox, MCP, tracing) in
research_agent/settings.py, whose `Settings` is the one class the running service reads.
"""

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Json, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .web.error_shape import ErrorResponse

# --- Settings: field name = environment variable name ---------------------------------------------

APP_DIR = Path(__file__).resolve().parent.parent  # research-agent/
BUNDLED_NOTES_DIR = APP_DIR / "notes"
REPO_DOCS_DIR = APP_DIR.parent / "docs"  # the course text: DOCS_DIR=../docs make research-agent

OFFLINE_MODEL_NAME = "offline-research-model"


class AgentSettings(BaseSettings):
    # VAR= (as in .env.example) means "use the default"
    model_config = SettingsConfigDict(env_ignore_empty=True)

    APP_VERSION: str = "1.0.0"

    # Model: without a key the deterministic offline model answers from search results.
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    OPENAI_MAX_RETRIES: int = 2
    MODEL_NAME: str = "gpt-4o-mini"
    TEMPERATURE: float = 0.2
    MAX_MODEL_CALLS: int = 5
    OFFLINE_TOKEN_DELAY_MS: int = 15
    REQUEST_TIMEOUT_SECONDS: float = 30.0

    # Search: "auto" means local when offline, duckduckgo when a real model is configured.
    SEARCH_BACKEND: Literal["auto", "local", "duckduckgo"] = "auto"
    SEARCH_MAX_RESULTS: int = 4
    SEARCH_TIMEOUT_SECONDS: float = 10.0
    DOCS_DIR: Path | None = None

    @property
    def offline(self) -> bool:
        return self.OPENAI_API_KEY is None or not self.OPENAI_API_KEY.get_secret_value()

    @property
    def model_label(self) -> str:
        return OFFLINE_MODEL_NAME if self.offline else self.MODEL_NAME

    @property
    def search_backend(self) -> str:
        if self.SEARCH_BACKEND != "auto":
            return self.SEARCH_BACKEND
        return "local" if self.offline else "duckduckgo"

    @property
    def docs_dirs(self) -> list[Path]:
        """Folders searched by the local backend: the bundled notes, and DOCS_DIR when it is set."""
        extra = [self.DOCS_DIR] if self.DOCS_DIR is not None else []
        dirs = [d.resolve() for d in (*extra, BUNDLED_NOTES_DIR) if d.is_dir()]
        return list(dict.fromkeys(dirs))  # DOCS_DIR=notes must not index the notes twice


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
