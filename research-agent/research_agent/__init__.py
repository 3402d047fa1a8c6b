"""Research agent: a LangChain tool-calling agent served by FastAPI.

Lessons 04 to 09 and the benchmarks reuse parts of it. What they may use is listed here, the
package's public surface, and they import it from the package itself:

    from research_agent import error_body, install_shape_handlers

never from a module inside it (`research_agent.error_shape`): the modules are the agent's own
business and may move. tests/repo/test_public_surface.py fails when a lesson or a benchmark imports
anything else. Each name is imported on first use, so `import research_agent` costs nothing and a
lesson that needs the error shape does not load LangChain.
"""

import importlib

# name -> (module, attribute); the attribute is the name unless it is given.
_PUBLIC: dict[str, tuple[str, str | None]] = {
    # The course's error shape (lessons 04, 05, 07, 08): one body for every 4xx/5xx, its handlers.
    "ErrorResponse": ("error_shape", None),
    "error_body": ("error_shape", None),
    "ApiError": ("error_shape", None),
    "install_shape_handlers": ("error_shape", None),
    # Request ids: what a caller's X-Request-ID may be, and log lines that carry it.
    "log_with_request_ids": ("request_ids", None),
    "safe_request_id": ("request_ids", None),
    # The request body limit, enforced before a route reads the body.
    "BodyLimitMiddleware": ("body_limit", None),
    # Forwarded addresses: which proxies may name the client to uvicorn.
    "uvicorn_forwarding": ("forwarded", None),
    # The job contract between lesson 05's orchestrator and the worker (`python -m
    # research_agent.worker`): the job, its Redis keys, answer styles and exit codes.
    "job": ("job", ""),
    "Job": ("job", None),
    "AnswerStyle": ("job", None),
    "ANSWER_STYLES": ("job", None),
    "EXIT_REASONS": ("job", None),
    "WORKER_EVENTS": ("job", None),
    "events_key": ("job", None),
    "variation_key": ("job", None),
    "worker_events_key": ("job", None),
    "warm_queue_key": ("job", None),
    "warm_ready_key": ("job", None),
    # The Docker Engine client, with the course's timeouts and the host's Docker context.
    "docker_client": ("docker_client", None),
    # The sandbox runner (lesson 04), its limits and what a run returns; lesson 08's guard compares
    # a container create with the runner's own (label, masked paths, seccomp profile, watchdog).
    "SandboxConfig": ("sandbox_config", None),
    "SandboxRunner": ("sandbox", None),
    "RunResult": ("sandbox", None),
    "SandboxError": ("sandbox", None),
    "SandboxUnavailable": ("sandbox", None),
    "LABEL": ("sandbox", None),
    "MASKED_PATHS": ("sandbox", None),
    "SECCOMP_PROFILE": ("sandbox", None),
    "WATCHDOG": ("sandbox", None),
    "remove_sandbox": ("sandbox", "remove"),
    "QueuedRunner": ("sandbox_admission", None),
    "SandboxBusy": ("sandbox_admission", None),
    "SandboxShuttingDown": ("sandbox_admission", None),
    "ContainerPool": ("sandbox_pool", None),
    "POOL_REQUEST_ID": ("sandbox_pool", None),
    "EgressGateway": ("sandbox_egress", None),
    "sandbox_runner": ("sandbox_parts", None),
    # Durable runs (lesson 10): the store, the approvals, the keyed sandbox and the run loop.
    "BadEdit": ("durable.approvals", None),
    "DecisionIn": ("durable.approvals", None),
    "approval_middleware": ("durable.approvals", None),
    "resume_value": ("durable.approvals", None),
    "KeyedSandbox": ("durable.idempotent", None),
    "make_durable_run_python": ("durable.idempotent", None),
    "DurableRuns": ("durable.runs", None),
    "short": ("durable.runs", None),
    "Conflict": ("durable.store", None),
    "RunStore": ("durable.store", None),
    "make_pool": ("durable.store", None),
    "migrate": ("durable.store", None),
    "make_run_python_tool": ("python_tool", None),
    # Tracing set-up (lesson 09, used by lessons 05, 07 and 08): the OTEL_* settings, the provider
    # and instrumentation, the tracer, and FastAPI's server spans.
    "TracingSettings": ("settings", None),
    "configure_tracing": ("tracing", None),
    "trace_env": ("job", None),  # a worker's job joins the launch's trace
    "instrument": ("tracing", None),
    "tracer": ("tracing", None),
    "FASTAPI_TELEMETRY": ("tracing", None),
    "TracedRunner": ("tracing", None),  # lesson 04's sandbox runs as spans (lesson 08's server)
    # The agent itself, as the benchmarks and lesson 08's servers run it: settings, the agent (and
    # the agent with the service's tools and middleware, build_agent), the offline model and its
    # prompt, the local search over the bundled notes.
    "Settings": ("settings", None),
    "BUNDLED_NOTES_DIR": ("schemas", None),
    "ResearchAgent": ("agent", None),
    "build_agent": ("tools", None),
    "OfflineResearchModel": ("offline_model", None),
    "SYSTEM_PROMPT": ("agent", None),
    "LocalSearch": ("search", None),
    "format_results": ("search", None),
    # An MCP session's answer checks, each schema checked once (the agent's, lesson 08's gateway's).
    "validate_answers_once": ("mcp_answers", None),
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    value = module if attribute == "" else getattr(module, attribute or name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
