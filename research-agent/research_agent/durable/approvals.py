"""A person approves risky tool calls: LangChain's HumanInTheLoopMiddleware does the pausing.

In `per_call` mode the middleware raises one LangGraph `interrupt` per gated call, as the call
starts; the run's checkpoint holds it until `Command(resume={interrupt_id: decision})` continues
the run. A decision arrives over HTTP, so it is checked here first, against the same schema the
middleware would use: a bad edit is the client's 422, never a run that fails on resume.
"""

from typing import Literal

from langchain.agents.middleware import HumanInTheLoopMiddleware
from langchain_core.tools import BaseTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DECISIONS = ["approve", "edit", "reject"]


def approval_middleware(tool_names: list[str]) -> HumanInTheLoopMiddleware:
    """Pause before every call of these tools; approve, edit or reject it."""
    return HumanInTheLoopMiddleware(
        interrupt_on={name: {"allowed_decisions": DECISIONS} for name in tool_names},
        interrupt_mode="per_call",
    )


class DecisionIn(BaseModel):
    """POST /v1/runs/{id}/decisions."""

    model_config = ConfigDict(extra="forbid")

    call_id: str = Field(min_length=1, max_length=200)
    decision: Literal["approve", "edit", "reject"]
    args: dict | None = Field(default=None, description="edit only: the tool's new arguments")
    message: str | None = Field(default=None, max_length=2000, description="reject: the reason")


class BadEdit(ValueError):
    def __init__(self, errors: list[dict]):
        super().__init__("the edited arguments do not fit the tool")
        self.errors = errors


def resume_value(body: DecisionIn, tool_name: str, tool: BaseTool | None) -> dict:
    """The decision in the middleware's own shape, with an edit's arguments checked against the
    tool's schema (what the model sees), so the run resumes with arguments the tool accepts."""
    if body.decision == "approve":
        return {"type": "approve"}
    if body.decision == "reject":
        return {"type": "reject", **({"message": body.message} if body.message else {})}
    args = body.args
    if args is None:
        raise BadEdit([{"loc": ["body", "args"], "msg": "an edit needs args", "type": "missing"}])
    schema = tool.tool_call_schema if tool else None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            strict = schema.model_validate(args, strict=True)
        except ValidationError as exc:
            raise BadEdit(
                [
                    {"loc": ["body", "args", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                    for e in exc.errors()
                ]
            ) from None
        args = strict.model_dump()
    return {"type": "edit", "edited_action": {"name": tool_name, "args": args}}
