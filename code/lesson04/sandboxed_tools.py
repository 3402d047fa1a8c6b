"""Lesson 04, Going further: the production version of step 4 (code/lesson04/step4_api.py).

Run it:  make lesson-04-production   (needs Docker; builds the image agent-sandbox:python first)

The same two routes, on the research agent's runner (research_agent/sandbox*.py): a PID 1 watchdog
and a seccomp profile in every container, a uid per run, a bounded queue with a share per client,
the course's error shape, and the parts its SANDBOX_* settings turn on (a pool, egress, gVisor).

Endpoints:
  GET  /health             the process answers
  POST /v1/tools/python    {"code": "...", "timeout_seconds": 5} runs the code in a new container,
                           answers {stdout, stderr, exit_code, timed_out, oom_killed, truncated,
                           duration_ms}
  POST /v1/agent           {"query": "What is 2**100?"}: an agent whose run_python tool uses the
                           same sandbox

A failing program is a result (exit code, timed out, OOM), not an error; no Docker is a 503.
"""

import asyncio
import logging
import math
import signal
import threading
from contextlib import asynccontextmanager

import uvicorn
from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings

from chat_model import OfflineToolCallingModel, make_chat_model

# The runner is in the research agent (research_agent/sandbox/), which ships it in its image; the
# lesson imports that installed package rather than copies, and with it the course's error shape,
# request ids and body limit, as lessons 05 and 07 do.
from research_agent import (
    SANDBOX_SETTABLE,
    AllowedHostsMiddleware,
    BodyLimitMiddleware,
    QueuedRunner,
    RunResult,
    SandboxBusy,
    SandboxConfig,
    SandboxShuttingDown,
    SandboxUnavailable,
    error_body,
    install_request_ids,
    install_shape_handlers,
    log_with_request_ids,
    make_run_python_tool,
    sandbox_runner,
    uvicorn_forwarding,
)

log_with_request_ids()  # every log line names its request, as the error bodies do
logger = logging.getLogger("sandboxed_tools")


class Sandbox(SandboxConfig):
    """The runner's settings (research_agent/settings.py), every SANDBOX_* variable of them:
    SANDBOX_IMAGE, SANDBOX_RUNTIME (runc, or "runsc" for gVisor), SANDBOX_TIMEOUT_SECONDS (per
    run), SANDBOX_MAX_CONCURRENT, SANDBOX_MAX_QUEUED (beyond: 503 sandbox_busy),
    SANDBOX_MAX_PER_CLIENT (runs one client address may have going: 429 beyond), SANDBOX_OWNER,
    SANDBOX_SWEEP_INTERVAL_SECONDS, SANDBOX_POOL_SIZE (Going further). Egress (Going further):
    SANDBOX_EGRESS=allowlist, the allowed hosts (SANDBOX_ALLOWED_HOSTS=pypi.org
    *.pythonhosted.org) through a proxy that adds the declared credentials
    (SANDBOX_CREDENTIALS='api.example.com=Authorization: Bearer ${API_TOKEN}': API_TOKEN goes from
    this process's environment to the proxy's only), its caps and way out (SANDBOX_EGRESS_*)."""

    settable = SANDBOX_SETTABLE | {"max_timeout_seconds"}
    owner: str = "lesson-04"  # label value: which service started a container
    max_timeout_seconds: float = 30.0  # SANDBOX_MAX_TIMEOUT_SECONDS: the most a request may ask


class Settings(BaseSettings):
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    OPENAI_API_KEY: SecretStr | None = None
    MODEL_NAME: str = "gpt-4o-mini"
    OFFLINE_TOKEN_DELAY_MS: int = 20
    REQUEST_TIMEOUT_SECONDS: float = 60.0
    MAX_CODE_CHARS: int = 20_000
    MAX_BODY_BYTES: int = 262_144  # the longest code in any encoding, with room to spare
    sandbox: Sandbox = Field(default_factory=Sandbox)
    # Proxies whose X-Forwarded-For names the client (research_agent/access/forwarded.py); empty:
    # none, so a client cannot pick a new address, and a fresh share, per request.
    FORWARDED_ALLOW_IPS: str = ""
    # The Host names it answers (JSON in the environment): a web page under another name, pointed
    # at 127.0.0.1 (DNS rebinding), cannot post code here. Not the sandbox's SANDBOX_ALLOWED_HOSTS.
    ALLOWED_HOSTS: list[str] = ["127.0.0.1", "localhost"]


settings = Settings()


# === Requests and responses: what is too big or empty never reaches Docker ===


class CodeRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # "5", "1_0" and true are not numbers

    # No NUL: Python stops reading a source there, so the rest would silently never run.
    code: str = Field(
        min_length=1,
        max_length=settings.MAX_CODE_CHARS,
        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
        description="Python 3.11, without NUL characters",
    )
    timeout_seconds: float | None = Field(
        default=None, gt=0, le=settings.sandbox.max_timeout_seconds
    )


class AgentRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    query: str = Field(min_length=1, max_length=4000)


class ToolCall(BaseModel):
    code: str
    result: RunResult


class AgentResponse(BaseModel):
    answer: str
    tool_calls: list[ToolCall]
    model: str


# === The agent: a chat model with one tool, run_python, whose calls run in the sandbox ===

SYSTEM_PROMPT = """You answer questions. For anything that needs computing, call run_python with a
complete program that prints the result, then answer from its output. If the run failed, say so."""


def build_agent(runner: QueuedRunner):
    model = make_chat_model(
        settings.OPENAI_API_KEY.get_secret_value() if settings.OPENAI_API_KEY else None,
        settings.MODEL_NAME,
        settings.OFFLINE_TOKEN_DELAY_MS,
        offline_model=OfflineToolCallingModel,
    )
    return model.model_name, create_agent(
        model,
        [make_run_python_tool(runner, correlation_id.get)],
        system_prompt=SYSTEM_PROMPT,
        # A real model may keep calling the tool; four model turns are plenty for one question.
        middleware=[ModelCallLimitMiddleware(run_limit=4, exit_behavior="end")],
    )


@asynccontextmanager
async def lifespan(app: FastAPI):
    # The research agent's runner, with the parts the SANDBOX_* settings ask for: egress through
    # an allow-list proxy, a pool of containers started ahead (both off by default), a sweep.
    runner = sandbox_runner(settings.sandbox)
    try:  # containers a crashed API (this one or another) left behind
        removed = await asyncio.to_thread(runner.sweeper.sweep)
        logger.info("Sandbox ready (%s); removed %d leftover container(s)", runner.config, removed)
    except SandboxUnavailable as exc:
        logger.warning("Sandbox unavailable, runs will answer 503 until it is: %s", exc)
    runner.start()  # the sweep again on a timer, and the pool's containers started ahead
    app.state.runner = runner
    app.state.model_name, app.state.agent = build_agent(runner)
    # On SIGTERM, runs still waiting are refused at once (503 shutting_down): uvicorn waits for
    # every open request before it stops, and a queue of long runs would hold it for minutes.
    # Chained: uvicorn's own handler still runs (lesson 01, step 3, shows why).
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        loop.call_soon_threadsafe(runner.begin_shutdown)
        if callable(previous):
            previous(signum, frame)

    if threading.current_thread() is threading.main_thread():  # not under a test client
        signal.signal(signal.SIGTERM, on_sigterm)
    yield
    await asyncio.to_thread(runner.close)  # running sandboxes finish and are removed


app = FastAPI(title="Sandboxed tools", version="1.0.0", lifespan=lifespan)


# === Request ids and errors: one JSON shape, no stack traces ===


# Outermost last: the request id is set before the Host check or the body limit can answer, so a
# 400 or a 413 carries it too.
app.add_middleware(BodyLimitMiddleware, max_bytes=settings.MAX_BODY_BYTES)
app.add_middleware(AllowedHostsMiddleware, allowed_hosts=settings.ALLOWED_HOSTS)
install_request_ids(app)
install_shape_handlers(app)  # 422, any HTTPException (400, 404, 413) and the last-resort 500


def error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(error_type, message), status_code=status)


@app.exception_handler(SandboxBusy)  # a full queue is everyone's 503, one caller's share a 429
async def sandbox_busy(request: Request, exc: SandboxBusy) -> JSONResponse:
    status, error_type = (429, "too_many_runs") if exc.per_caller else (503, "sandbox_busy")
    response = error(status, error_type, str(exc))
    response.headers["Retry-After"] = str(math.ceil(settings.sandbox.timeout_seconds))
    return response


@app.exception_handler(SandboxShuttingDown)
async def shutting_down(request: Request, exc: SandboxShuttingDown) -> JSONResponse:
    response = error(503, "shutting_down", str(exc))
    response.headers["Retry-After"] = "1"  # another instance, or this one once restarted
    return response


@app.exception_handler(SandboxUnavailable)
async def sandbox_unavailable(request: Request, exc: SandboxUnavailable) -> JSONResponse:
    return error(503, "sandbox_unavailable", f"The sandbox cannot run code now: {exc}")


ERRORS = {
    400: {
        "description": "untrusted_host: a Host not in ALLOWED_HOSTS; or a body that cannot be "
        "decoded (invalid UTF-8, nested too deep)"
    },
    413: {"description": "The body is larger than MAX_BODY_BYTES"},
    414: {"description": "The URL is over 2 KB"},
    422: {"description": "Empty or oversized code, or a timeout out of range"},
    429: {"description": "too_many_runs: this client already has its share running or waiting"},
    503: {"description": "Docker, the image or the runtime is unavailable; or sandbox_busy"},
}


# === Routes ===


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/v1/tools/python", responses=ERRORS)
async def run_python(body: CodeRequest, request: Request) -> RunResult:
    """Run the code in a fresh container; a failing program is a result, not an error."""
    runner: QueuedRunner = request.app.state.runner
    client = request.client.host if request.client else None
    return await runner.arun(
        body.code,
        body.timeout_seconds,
        correlation_id.get(),
        caller=client,  # one client cannot take every slot
        abandoned=request.is_disconnected,  # a client that hung up while waiting runs nothing
    )


@app.post(
    "/v1/agent",
    responses={**ERRORS, 502: {"description": "The model failed"}, 504: {"description": "Timeout"}},
)
async def ask(body: AgentRequest, request: Request) -> AgentResponse:
    try:
        state = await asyncio.wait_for(
            request.app.state.agent.ainvoke({"messages": [HumanMessage(body.query)]}),
            settings.REQUEST_TIMEOUT_SECONDS,
        )
    except SandboxUnavailable:
        raise
    except TimeoutError:
        return error(504, "timeout", f"No answer within {settings.REQUEST_TIMEOUT_SECONDS:g} s")
    except Exception as exc:  # the model provider failed: our 502, its details in our log
        logger.warning("The agent failed: %r", exc)
        return error(502, "model_error", "The model failed to answer")
    messages = state["messages"]
    calls = [m.artifact for m in messages if isinstance(m, ToolMessage) and m.artifact]
    answer = next((m.text for m in reversed(messages) if isinstance(m, AIMessage)), "")
    return AgentResponse(
        answer=answer.strip(), tool_calls=calls, model=request.app.state.model_name
    )


if __name__ == "__main__":
    uvicorn.run(
        app,
        host=settings.HOST,
        port=settings.PORT,
        **uvicorn_forwarding(settings.FORWARDED_ALLOW_IPS),
    )
