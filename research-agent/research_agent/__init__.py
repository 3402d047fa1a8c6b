"""Research agent: a LangChain tool-calling agent served by FastAPI.

Lessons 04 to 09 and the benchmarks reuse parts of it. What they may use is listed here, the
package's public surface, and they import it from the package itself:

    from research_agent import error_body, install_shape_handlers

never from a module inside it (`research_agent.web.error_shape`): the modules are the agent's own
business and may move. tests/repo/test_public_surface.py fails when a lesson or a benchmark imports
anything else. Each name is imported on first use, so `import research_agent` costs nothing and a
lesson that needs the error shape does not load LangChain.
"""

import importlib

# name -> (module, attribute); the attribute is the name unless it is given.
_PUBLIC: dict[str, tuple[str, str | None]] = {
    # The course's error shape (lessons 04, 05, 07, 08): one body for every 4xx/5xx, its handlers.
    "ErrorResponse": ("web.error_shape", None),
    "error_body": ("web.error_shape", None),
    "ApiError": ("web.error_shape", None),
    "install_shape_handlers": ("web.error_shape", None),
    # Request ids: what a caller's X-Request-ID may be, the middleware that keeps it, and log lines
    # that carry it.
    "install_request_ids": ("observability.request_ids", None),
    "log_with_request_ids": ("observability.request_ids", None),
    # What is stored of a token handed to a caller (lesson 05's run owners, lesson 07's students).
    "token_hash": ("access.keys", None),
    # The request body limit, enforced before a route reads the body.
    "BodyLimitMiddleware": ("web.body_limit", None),
    # The Host names a service answers (DNS rebinding), refused in the error shape.
    "AllowedHostsMiddleware": ("web.allowed_hosts", None),
    # A number in a request header (Content-Length, Last-Event-ID): ASCII digits, else a 400.
    "header_number": ("web.header_numbers", None),
    # Forwarded addresses: which proxies may name the client to uvicorn.
    "uvicorn_forwarding": ("access.forwarded", None),
    # The job contract between lesson 05's orchestrator and the worker (`python -m
    # research_agent.worker`): the job, its Redis keys, answer styles and exit codes.
    "job": ("worker.job", ""),
    "Job": ("worker.job", None),
    "AnswerStyle": ("worker.job", None),
    "ANSWER_STYLES": ("worker.job", None),
    "EXIT_REASONS": ("worker.job", None),
    "WORKER_EVENTS": ("worker.job", None),
    "events_key": ("worker.job", None),
    "variation_key": ("worker.job", None),
    "worker_events_key": ("worker.job", None),
    "warm_queue_key": ("worker.job", None),
    "warm_ready_key": ("worker.job", None),
    # The Docker Engine client, with the course's timeouts and the host's Docker context.
    "docker_client": ("sandbox.docker_client", None),
    # The sandbox runner (lesson 04), its limits and what a run returns; lesson 08's guard compares
    # a container create with the runner's own (label, masked paths, seccomp profile, watchdog).
    "SandboxConfig": ("sandbox.config", None),
    "SANDBOX_SETTABLE": ("sandbox.config", "SETTABLE"),
    "SandboxRunner": ("sandbox.runner", None),
    "RunResult": ("sandbox.runner", None),
    "SandboxError": ("sandbox.runner", None),
    "SandboxUnavailable": ("sandbox.runner", None),
    "LABEL": ("sandbox.runner", None),
    "MASKED_PATHS": ("sandbox.runner", None),
    "SECCOMP_PROFILE": ("sandbox.runner", None),
    "WATCHDOG": ("sandbox.runner", None),
    "remove_sandbox": ("sandbox.runner", "remove"),
    "QueuedRunner": ("sandbox.admission", None),
    "SandboxBusy": ("sandbox.admission", None),
    "SandboxShuttingDown": ("sandbox.admission", None),
    "ContainerPool": ("sandbox.pool", None),
    "POOL_REQUEST_ID": ("sandbox.pool", None),
    "EgressGateway": ("sandbox.egress", None),
    "sandbox_runner": ("sandbox.parts", None),
    # Durable runs (lesson 10): the store, the approvals, the keyed sandbox and the run loop.
    "BadEdit": ("durable.approvals", None),
    "DecisionIn": ("durable.approvals", None),
    "approval_middleware": ("durable.approvals", None),
    "resume_value": ("durable.approvals", None),
    "KeyedSandbox": ("durable.idempotent", None),
    "make_durable_run_python": ("durable.idempotent", None),
    "DurableRuns": ("durable.runs", None),
    "RunEvents": ("durable.streams", None),
    "short": ("durable.runs", None),
    "Conflict": ("durable.store", None),
    "RunStore": ("durable.store", None),
    "make_pool": ("durable.store", None),
    "migrate": ("durable.store", None),
    "make_run_python_tool": ("sandbox.python_tool", None),
    # Tracing set-up (lesson 09, used by lessons 05, 07 and 08): the OTEL_* settings, the provider
    # and instrumentation, the tracer, and FastAPI's server spans.
    "TracingSettings": ("tracing.settings", None),
    "configure_tracing": ("tracing.otel", None),
    "trace_env": ("worker.job", None),  # a worker's job joins the launch's trace
    "instrument": ("tracing.otel", None),
    "tracer": ("tracing.otel", None),
    "FASTAPI_TELEMETRY": ("tracing.otel", None),
    "TracedRunner": (
        "tracing.otel",
        None,
    ),  # lesson 04's sandbox runs as spans (lesson 08's server)
    # The agent itself, as the benchmarks and lesson 08's servers run it: settings, the agent (and
    # the agent with the service's tools and middleware, build_agent), the offline model and its
    # prompt, the local search over the bundled notes.
    "Settings": ("settings", None),
    "BUNDLED_NOTES_DIR": ("schemas", None),
    "ResearchAgent": ("agent", None),
    "build_agent": ("tools", None),
    "OfflineResearchModel": ("offline_model", None),
    # The offline family lesson 01's models (code/chat_model.py) belong to: they say what they
    # answer, the base class streams it.
    "OfflineReply": ("offline_model", None),
    "PacedOfflineModel": ("offline_model", None),
    "SYSTEM_PROMPT": ("agent", None),
    "LocalSearch": ("search", None),
    "format_results": ("search", None),
    # Lesson 11's evals compose the agent as the service does, with a search tool of their own
    # (search_tool: any function as the agent's search) and serve it with the service's app.
    "make_search_tool": ("search", None),
    "search_tool": ("search", None),
    "create_app": ("app", None),
    # An MCP session's answer checks, each schema checked once (the agent's, lesson 08's gateway's).
    "validate_answers_once": ("mcp.answers", None),
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
