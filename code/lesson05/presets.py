"""What the variations change: each differs in something you can see (docs/05, "What the variations
change"). Variation i starts from PRESETS[i]; a request (RunRequest) may override any field."""

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from research_agent import AnswerStyle


class Variation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    style: AnswerStyle | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    search_depth: int | None = Field(None, ge=1, le=8, description="search results to read")
    model: str | None = Field(None, pattern=r"^[A-Za-z0-9._:/-]{1,64}$", description="online only")


# What variation i is when the request does not say: style, temperature and search depth all change.
PRESETS = [
    Variation(style="bullets", temperature=0.0, search_depth=4),
    Variation(style="brief", temperature=0.0, search_depth=4),
    Variation(style="detailed", temperature=0.0, search_depth=2),
    Variation(style="bullets", temperature=0.9, search_depth=6),
    Variation(style="brief", temperature=0.9, search_depth=6),
    Variation(style="detailed", temperature=0.9, search_depth=3),
    Variation(style="bullets", temperature=0.0, search_depth=1),
    Variation(style="detailed", temperature=1.5, search_depth=5),
]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=3, max_length=2000)
    variations: int = Field(3, ge=1, le=len(PRESETS))
    overrides: list[Variation] = Field(default_factory=list, max_length=len(PRESETS))

    @field_validator("query")
    @classmethod
    def printable(cls, query: str) -> str:
        query = query.strip()
        if len(query) < 3 or re.search(r"[\x00-\x08\x0b-\x1f\x7f]", query):
            raise ValueError("the query needs 3+ characters and no control characters")
        return query

    @model_validator(mode="after")
    def overrides_fit(self) -> "RunRequest":
        if len(self.overrides) > self.variations:
            raise ValueError(f"{len(self.overrides)} overrides for {self.variations} variations")
        return self

    def resolved(self) -> list[dict]:
        """Each variation's settings: its preset, with the request's overrides on top."""
        result = []
        for i in range(self.variations):
            given = self.overrides[i] if i < len(self.overrides) else Variation()
            merged = PRESETS[i].model_dump() | given.model_dump(exclude_none=True)
            result.append({"index": i, **merged})
        return result


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variation: int = Field(ge=0, le=len(PRESETS) - 1)
