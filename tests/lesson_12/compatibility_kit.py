"""The A2A project's compatibility kit (a2aproject/a2a-tck, its 1.0 line) against lesson 12.

The kit is not on PyPI and is never committed here: give this script a checkout of it (its branch
`1.0-dev`) and a Python environment it installed into (`uv pip install -e .` in the checkout).

  python -m tests.lesson_12.compatibility_kit --kit DIR --kit-python DIR/.venv/bin/python
  make a2a-tck A2A_TCK=DIR      (the same; DIR/.venv is made when it is missing)

It runs the kit twice and prints its summary each time:

1. Its agent-card requirements against `make lesson-12` as a learner runs it (the Compose project
   lesson12 on 127.0.0.1:8120, brought up here unless it is up already). The card is public.
2. Its MUST level against the lesson's composition (code/lesson12/a2a_server.py: the SDK's versioned
   task store and event log in PostgreSQL, owners, the edge, both replicas) serving the kit's own
   scenario executor in place of the research agent: most of the kit's cases send messages whose
   id names a behaviour for that executor. It is generated from the kit's scenarios here, its
   two imports that a2a-sdk 1.3 moved are adjusted, and its events pass through TaskFirst (below),
   which sends a new task's Task before its first status, as a2a-sdk 1.x requires. The kit sends
   no credentials, so it reaches the edge through a small local proxy that adds a caller's bearer
   token to every request.
"""

import argparse
import asyncio
import os
import re
import secrets
import subprocess
import tempfile
import threading
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from support.lessons import ROOT
from support.waiting import wait_for

COMPOSE_FILE = ROOT / "code" / "lesson12" / "compose.yaml"
EDGE_PORT, PROXY_PORT, PLANNER_PORT = 19230, 19231, 19232
PROJECT = "lesson12kit"
SUMMARY = re.compile(
    r"(=+ .*(passed|failed|error).* =+|^(MUST|SHOULD|MAY|Overall|Compat).*$)", re.M
)


def scenario_executor(kit: Path, python: Path, work: Path) -> Path:
    """The kit's scenario executor, generated from its scenarios, as a module the server loads."""
    out = work / "sut"
    subprocess.run([python, "-m", "codegen.generator", "--target", "a2a-python", "--output", out],
                   cwd=kit, check=True, capture_output=True, timeout=300)  # fmt: skip
    source = (out / "sut_agent.py").read_text()
    # a2a-sdk 1.3 serves through a2a.server.routes; the module's main() (never called) used apps.
    source = re.sub(r"from a2a\.server\.apps import \(.*?\)\n", "", source, flags=re.S)
    source = source.replace(
        "from a2a.server.request_handlers.default_request_handler import (\n"
        "    DefaultRequestHandler,\n)",
        "from a2a.server.request_handlers import DefaultRequestHandler",
    )
    # a2a-sdk 1.x wants a new task's first event to be the Task itself (else
    # InvalidAgentResponseError); the kit's executor starts with a status update (TaskUpdater's
    # start_work, a2aproject/a2a-python#409). Its events go through TaskFirst, which sends the Task
    # first: without it most of the kit's cases fail on that alone, before what they check.
    anchor = "        if task_id is None or context_id is None:\n            return\n"
    if anchor not in source:
        raise RuntimeError("the kit's executor changed: its start of execute() is not found")
    source = source.replace(
        anchor, anchor + "        event_queue = TaskFirst(event_queue, context)\n", 1
    )
    module = work / "tck_executor.py"
    module.write_text(source + TASK_FIRST)
    return module


TASK_FIRST = """

from a2a.types import Message, Task, TaskState, TaskStatus


class TaskFirst:
    \"\"\"An event queue that sends a new task's Task before its first other event.\"\"\"

    def __init__(self, queue, context):
        self.queue, self.context, self.first = queue, context, context.current_task is None

    async def enqueue_event(self, event):
        if self.first and not isinstance(event, Message | Task):
            status = TaskStatus(state=TaskState.TASK_STATE_SUBMITTED)
            await self.queue.enqueue_event(Task(id=self.context.task_id,
                context_id=self.context.context_id, status=status,
                history=[self.context.message] if self.context.message else []))
        self.first = False
        await self.queue.enqueue_event(event)

    def __getattr__(self, name):
        return getattr(self.queue, name)
"""


def override(work: Path, module: Path, callers: Path) -> Path:
    # The hosts are the stack's own (ALLOWED_HOSTS in compose.yaml): the proxy passes on the kit's
    # Host, 127.0.0.1:PORT, and the edge's check asks for localhost. The card names the proxy.
    agent = f"""
    environment:
      A2A_AGENT: tck_executor:TckAgentExecutor
      PUBLIC_PORTS: '{{"127.0.0.1": {PROXY_PORT}}}'
    volumes:
      - {module}:/app/lesson12/tck_executor.py:ro
      - {callers}:/run/lesson12/callers:ro
"""
    path = work / "override.yaml"
    path.write_text(f"services:\n  agent1:{agent}  agent2:{agent}")
    return path


def proxy_app(token: str) -> Starlette:
    """Every request to the edge with a caller's bearer token added; streams passed through."""
    http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{EDGE_PORT}", timeout=300)

    async def forward(request: Request):
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        headers["authorization"] = f"Bearer {token}"
        sent = http.build_request(request.method, request.url.path, params=request.query_params,
                                  headers=headers, content=await request.body())  # fmt: skip
        answer = await http.send(sent, stream=True)
        dropped = ("content-length", "transfer-encoding", "connection")
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in dropped}
        return StreamingResponse(answer.aiter_raw(), answer.status_code, kept)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)])


def serve_proxy(token: str) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(proxy_app(token), host="127.0.0.1", port=PROXY_PORT,
                                           log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    wait_for(lambda: server.started, timeout=30, what="the proxy")
    return server


def run_kit(kit: Path, python: Path, host: str, *args: str) -> str:
    done = subprocess.run([python, "run_tck.py", "--sut-host", host, *args], cwd=kit,
                          capture_output=True, text=True, timeout=1800)  # fmt: skip
    return done.stdout + done.stderr


def summary(output: str) -> str:
    lines = [line for line in output.splitlines() if SUMMARY.search(line)]
    return "\n".join(lines[-12:]) or output[-3000:]


def compose(env: dict, *args: str, files=()) -> None:
    command = ["docker", "compose", "-p", PROJECT, "-f", str(COMPOSE_FILE)]
    for extra in files:
        command += ["-f", str(extra)]
    subprocess.run([*command, *args], env=env, check=True, timeout=900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kit", type=Path, required=True)
    parser.add_argument("--kit-python", type=Path, required=True)
    args = parser.parse_args()
    kit, python = args.kit.resolve(), args.kit_python.absolute()  # the venv, not its target

    # 1. The card of `make lesson-12`, as it is.
    up = subprocess.run(["docker", "ps", "-q", "--filter",
                         "label=com.docker.compose.project=lesson12"],
                        capture_output=True, text=True).stdout.strip()  # fmt: skip
    if not up:
        subprocess.run(["make", "lesson-12"], cwd=ROOT, check=True, timeout=1800)
    try:
        card = run_kit(kit, python, "http://127.0.0.1:8120", "--transport", "jsonrpc,http_json",
                       "--", "-k", "agent_card")  # fmt: skip
    finally:
        if not up:
            subprocess.run(["make", "lesson-12-down"], cwd=ROOT, check=True, timeout=600)
    print("== the kit's agent-card requirements against make lesson-12 ==")
    print(summary(card))

    # 2. The kit's MUST level against the composition serving its scenario executor.
    work = Path(tempfile.mkdtemp(prefix="a2a-tck-"))
    token = secrets.token_hex(16)
    callers = work / "callers"
    callers.write_text(f"kit {token}\n")
    callers.chmod(0o644)
    files = [override(work, scenario_executor(kit, python, work), callers)]
    env = {
        **os.environ,
        "LESSON12_PORT": str(EDGE_PORT),
        "LESSON12_PLANNER_PORT": str(PLANNER_PORT),
        "LESSON12_SANDBOX_OWNER": PROJECT,
        "LESSON12_POSTGRES_PASSWORD": secrets.token_hex(16),
        "LESSON12_AGENT_PASSWORD": secrets.token_hex(16),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    try:
        compose(env, "up", "-d", "--wait", "--scale", "planner=0", files=files)
        proxy = serve_proxy(token)
        must = run_kit(kit, python, f"http://127.0.0.1:{PROXY_PORT}", "--level", "must",
                       "--transport", "jsonrpc,http_json")  # fmt: skip
        proxy.should_exit = True
    finally:
        compose(env, "down", "-v", "--remove-orphans", files=files)
    print("== the kit's MUST level against the lesson's composition, with the kit's executor ==")
    print(summary(must))
    (work / "card.txt").write_text(card)
    (work / "must.txt").write_text(must)
    print(f"(the kit's whole output: {work}/card.txt, {work}/must.txt; its reports: {kit}/reports)")


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    main()
