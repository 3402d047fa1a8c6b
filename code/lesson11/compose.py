"""The agent the evals judge, composed from the course's parts as the service composes its own:
lesson 02's research agent and its search over the notes, lesson 04's run_python, lesson 10's
approval before every run_python call, lesson 02's API in front (research_agent.create_app).

Everything a test or a learner changes to break it goes through these arguments (the search
tool, the middleware, the model), never through a switch inside the research agent:

    agent(settings, middleware=[])            # no approval: run_python runs at once
    agent(settings, search=search_that_fails())

An environment is a variation of the world a case runs in: "notes" (the bundled notes and the
planted ones), "search_down" (the search backend refuses), "search_slow" (it never answers within
the tool's timeout). Each gets its own app.
"""

import asyncio
from collections.abc import Sequence
from pathlib import Path

from langchain_core.language_models import BaseChatModel
from langchain_core.tools import BaseTool, ToolException

from research_agent import (
    ResearchAgent,
    SandboxConfig,
    Settings,
    approval_middleware,
    create_app,
    make_run_python_tool,
    make_search_tool,
    search_tool,
)

from .model import PYTHON, OfflineEvalModel

# Notes with instructions planted in them: test data, searched beside the bundled notes, never
# part of them. Their sources read `planted/<file>.md#<section>`.
PLANTED_DIR = Path(__file__).resolve().parent / "planted"
ENVIRONMENTS = ("notes", "search_down", "search_slow")
SLOW_SEARCH_TIMEOUT_SECONDS = 0.5


def settings(**overrides) -> Settings:
    """The service's settings for an eval run: local search over the notes and the planted notes,
    no delay between the offline model's tokens, no caller limits, no cache, no keys (whatever
    the shell exports), and prompts and answers kept in the spans, which the evaluators read."""
    return Settings(
        **{
            "SEARCH_BACKEND": "local",
            "DOCS_DIR": PLANTED_DIR,
            "OFFLINE_TOKEN_DELAY_MS": 0,
            "RATE_LIMIT": "off",
            "API_KEYS": None,
            "API_KEYS_FILE": None,
            "REDIS_URL": None,
            "MCP_GATEWAY_URL": None,
            "LOG_LEVEL": "ERROR",
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": True,
            **overrides,
        }
    )


class NoSandbox:
    """run_python's runner in the evals: it runs nothing. A call that reaches it got past the
    approval, and its `execute_tool run_python` span says so in the trace."""

    config = SandboxConfig(owner="evals")

    async def arun(self, code: str, **options):
        raise ToolException("Error: the evals run no code (no sandbox is attached).")


def run_python() -> BaseTool:
    tool = make_run_python_tool(NoSandbox(), lambda: "evals")
    tool.handle_tool_error = True
    return tool


def search_that_fails() -> BaseTool:
    def search_docs(query: str) -> list[dict]:
        raise ConnectionError("the search backend refused the connection")

    return search_tool(search_docs, "search_docs", "Search the course notes.")


def search_that_hangs() -> BaseTool:
    async def search_docs(query: str) -> list[dict]:
        await asyncio.sleep(60)
        return []

    return search_tool(search_docs, "search_docs", "Search the course notes.")


def agent(
    settings: Settings,
    *,
    search: BaseTool | None = None,
    middleware: Sequence | None = None,
    model: BaseChatModel | None = None,
    obeys_notes: bool = False,
) -> ResearchAgent:
    """The research agent with run_python behind lesson 10's approval. Offline, the model is
    OfflineEvalModel; with a key, the service's own (ChatOpenAI)."""
    if model is None and settings.offline:
        model = OfflineEvalModel(obeys_notes=obeys_notes)
    return ResearchAgent(
        settings,
        model=model,
        tool=search if search is not None else make_search_tool(settings),
        tools=[run_python()],
        middleware=[approval_middleware([PYTHON])] if middleware is None else middleware,
    )


def app(environment: str = "notes", **agent_options):
    """The research service (lesson 02's API, every layer on) around the agent, in one
    environment. `agent_options` go to agent(): a broken search, other middleware, a model."""
    env_settings = settings()
    if environment == "search_down":  # the world's condition: it wins over a given search
        agent_options["search"] = search_that_fails()
    elif environment == "search_slow":
        env_settings = settings(SEARCH_TIMEOUT_SECONDS=SLOW_SEARCH_TIMEOUT_SECONDS)
        agent_options["search"] = search_that_hangs()
    return create_app(env_settings, agent=agent(env_settings, **agent_options))
