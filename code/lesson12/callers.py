"""Who calls: a bearer token per caller, and the caller's name as the owner of its tasks.

The callers are a file of lines "name token" (make writes one with random tokens; it is not in
git). Only the tokens' hashes are kept in memory to compare. The SDK's routes ask a context
builder for the caller of each request; the SDK's task store keeps each task to the name it gives
(the owner), so another caller's GetTask, CancelTask or SubscribeToTask gets "task not found", and
ListTasks lists one's own tasks only.
"""

from pathlib import Path

from a2a.auth.user import User
from a2a.server.routes import DefaultServerCallContextBuilder
from starlette.requests import Request

from research_agent import token_hash


def load_callers(path: Path) -> dict[str, str]:
    """token hash -> caller's name, from the lines "name token" of `path`."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return {token_hash(token): name for name, token in lines}


class Caller(User):
    def __init__(self, name: str):
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def user_name(self) -> str:  # the owner of the tasks this caller creates
        return self.name


class Callers(DefaultServerCallContextBuilder):
    """The caller a middleware found for the request's token (request.state.caller)."""

    def build_user(self, request: Request) -> User:
        return Caller(request.state.caller)
