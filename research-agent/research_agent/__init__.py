"""Research agent: a LangChain tool-calling agent served by FastAPI.

Lessons 04 to 12 and the benchmarks reuse parts of it. What they may use is listed here, the
package's public surface, and they import it from the package itself:

    from research_agent import error_body, install_shape_handlers

never from a module inside it (`research_agent.web.error_shape`): the modules are the agent's own
business and may move. tests/repo/test_public_surface.py fails when a lesson or a benchmark imports
anything else.

The imports below say where each name lives, for editors and type checkers; at run time each
name is imported on first use (`__getattr__`, which reads the same imports), so
`import research_agent` costs nothing and a lesson that needs the error shape loads neither
LangChain, nor the Docker SDK, nor OpenTelemetry (importing all of them takes seconds).
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Who may name the client (uvicorn's proxy options); what is stored of a token handed out.
    from .access.forwarded import uvicorn_forwarding
    from .access.keys import token_hash

    # The agent as the benchmarks, lesson 08's servers and lesson 11's evals run it, and the app.
    from .agent import SYSTEM_PROMPT, ResearchAgent
    from .app import create_app

    # Durable runs (lesson 10): the store, the approvals, the keyed sandbox and the run loop.
    from .durable.approvals import BadEdit, DecisionIn, approval_middleware, resume_value
    from .durable.idempotent import KeyedSandbox, make_durable_run_python
    from .durable.runs import DurableRuns, short
    from .durable.store import Conflict, RunStore, make_pool, migrate
    from .durable.streams import RunEvents

    # Request ids: the middleware that keeps a safe X-Request-ID, log lines that carry it.
    from .observability.request_ids import install_request_ids, log_with_request_ids

    # The offline model, and the offline family lesson 01's models (code/chat_model.py) join.
    from .offline_model import OfflineReply, OfflineResearchModel, PacedOfflineModel

    # Lesson 04's sandbox: the runner, its limits and what a run returns; lesson 08's guard
    # compares a container create with the runner's own (label, masked paths, seccomp, watchdog).
    from .sandbox.admission import QueuedRunner, SandboxBusy, SandboxShuttingDown
    from .sandbox.docker_client import docker_client
    from .sandbox.egress import EgressGateway
    from .sandbox.parts import sandbox_runner
    from .sandbox.pool import POOL_REQUEST_ID, ContainerPool
    from .sandbox.python_tool import make_run_python_tool
    from .sandbox.runner import (
        LABEL,
        MASKED_PATHS,
        SECCOMP_PROFILE,
        WATCHDOG,
        RunResult,
        SandboxError,
        SandboxRunner,
        SandboxUnavailable,
    )
    from .sandbox.runner import remove as remove_sandbox

    # The search over the bundled notes; any function as the agent's search (search_tool).
    from .search import LocalSearch, format_results, make_search_tool, search_tool

    # Settings: the service's, the sandbox's (lesson 04's API reads the same SANDBOX_* variables)
    # and the OTEL_* ones (lessons 05, 07 and 08 read them without loading OpenTelemetry).
    from .settings import BUNDLED_NOTES_DIR, SandboxConfig, Settings, TracingSettings
    from .settings import SETTABLE as SANDBOX_SETTABLE

    # What is held at once (streams open, calls in flight), each slot given back once.
    from .slots import HeldSlots

    # The agent with the service's tools and middleware.
    from .tools import build_agent

    # Lesson 09: the provider and instrumentation, the tracer, FastAPI's server spans, and lesson
    # 04's sandbox runs as spans (lesson 08's server).
    from .tracing.otel import FASTAPI_TELEMETRY, TracedRunner, configure_tracing, instrument, tracer

    # The HTTP edge (lessons 04, 05, 07, 08): the Host names a service answers, the body limit,
    # the course's error shape (one body for every 4xx/5xx, its handlers), numbers in headers.
    from .web.allowed_hosts import AllowedHostsMiddleware
    from .web.body_limit import BodyLimitMiddleware
    from .web.error_shape import ApiError, ErrorResponse, error_body, install_shape_handlers
    from .web.header_numbers import header_number

    # The job contract between lesson 05's orchestrator and the worker (`python -m
    # research_agent.worker`): the job, its Redis keys, answer styles and exit codes; a worker's
    # job joins the launch's trace (trace_env).
    from .worker import job
    from .worker.job import (
        ANSWER_STYLES,
        EXIT_REASONS,
        WORKER_EVENTS,
        AnswerStyle,
        Job,
        events_key,
        trace_env,
        variation_key,
        warm_queue_key,
        warm_ready_key,
        worker_events_key,
    )

__all__ = [
    "ANSWER_STYLES",
    "BUNDLED_NOTES_DIR",
    "EXIT_REASONS",
    "FASTAPI_TELEMETRY",
    "LABEL",
    "MASKED_PATHS",
    "POOL_REQUEST_ID",
    "SANDBOX_SETTABLE",
    "SECCOMP_PROFILE",
    "SYSTEM_PROMPT",
    "WATCHDOG",
    "WORKER_EVENTS",
    "AllowedHostsMiddleware",
    "AnswerStyle",
    "ApiError",
    "BadEdit",
    "BodyLimitMiddleware",
    "Conflict",
    "ContainerPool",
    "DecisionIn",
    "DurableRuns",
    "EgressGateway",
    "ErrorResponse",
    "HeldSlots",
    "Job",
    "KeyedSandbox",
    "LocalSearch",
    "OfflineReply",
    "OfflineResearchModel",
    "PacedOfflineModel",
    "QueuedRunner",
    "ResearchAgent",
    "RunEvents",
    "RunResult",
    "RunStore",
    "SandboxBusy",
    "SandboxConfig",
    "SandboxError",
    "SandboxRunner",
    "SandboxShuttingDown",
    "SandboxUnavailable",
    "Settings",
    "TracedRunner",
    "TracingSettings",
    "approval_middleware",
    "build_agent",
    "configure_tracing",
    "create_app",
    "docker_client",
    "error_body",
    "events_key",
    "format_results",
    "header_number",
    "install_request_ids",
    "install_shape_handlers",
    "instrument",
    "job",
    "log_with_request_ids",
    "make_durable_run_python",
    "make_pool",
    "make_run_python_tool",
    "make_search_tool",
    "migrate",
    "remove_sandbox",
    "resume_value",
    "sandbox_runner",
    "search_tool",
    "short",
    "token_hash",
    "trace_env",
    "tracer",
    "uvicorn_forwarding",
    "variation_key",
    "warm_queue_key",
    "warm_ready_key",
    "worker_events_key",
]

_where: dict[str, tuple[str, str]] = {}


def _imports() -> dict[str, tuple[str, str]]:
    """Each public name -> (the module it lives in, its name there), read from the imports under
    TYPE_CHECKING above: the one list of where things are (scientific Python's lazy_loader reads
    a stub file the same way)."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    (block,) = [node for node in tree.body if isinstance(node, ast.If)]
    return {
        alias.asname or alias.name: (f"{__name__}.{node.module}", alias.name)
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _where:
        _where.update(_imports())
    module_name, attribute = _where[name]
    module = importlib.import_module(module_name)
    if not hasattr(module, attribute):  # a module itself (`from .worker import job`)
        importlib.import_module(f"{module_name}.{attribute}")
    value = getattr(module, attribute)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
