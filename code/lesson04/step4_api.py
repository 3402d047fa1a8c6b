"""Lesson 04, step 4: the sandbox behind an API, for the code you send and for the agent's tool.

Run it:  make lesson-04   (needs Docker; builds the image agent-sandbox:python first)
"""

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Annotated

import docker
import uvicorn
from docker.utils.socket import frames_iter
from fastapi import Body, FastAPI
from langchain.agents import create_agent
from langchain_core.tools import tool

from chat_model import OfflineToolCallingModel, make_chat_model

IMAGE = "agent-sandbox:python"  # the Python interpreter and its standard library, nothing else
COMMAND = ["python", "-I", "-u", "-"]  # the program comes on stdin: no shell ever parses it
TIMEOUT_SECONDS = 10.0  # wall clock, from start to kill
MAX_OUTPUT_BYTES = 64 * 1024  # per stream; the rest is never read into memory
RESTRICTIONS = {
    "network_mode": "none",  # no network: the loopback interface only
    "read_only": True,  # the image's files cannot be changed...
    "tmpfs": {"/tmp": "rw,noexec,nosuid,nodev,size=16m"},  # ...only a small /tmp that runs nothing
    "user": "65534:65534",  # not root
    "cap_drop": ["ALL"],  # none of root's powers...
    "security_opt": ["no-new-privileges"],  # ...and no way to gain them (setuid binaries)
    "mem_limit": "128m",  # killed past 128 MB...
    "memswap_limit": "128m",  # ...of memory and swap together, so it cannot swap instead
    "nano_cpus": 500_000_000,  # half a CPU
    "pids_limit": 64,  # processes and threads: a fork bomb stops here
    "log_config": {"type": "none"},  # the output is read live: no copy on the host's disk
}
MAX_CONCURRENT = 4  # containers at once; more runs wait for their turn
client = docker.from_env(use_context=True)  # the engine the `docker` command uses


@dataclass
class RunResult:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    oom_killed: bool
    truncated: bool


def kill(container) -> None:
    with contextlib.suppress(docker.errors.APIError):  # it has exited already
        container.kill()


def run(code: str, timeout: float = TIMEOUT_SECONDS) -> RunResult:
    """Run `code` in a fresh container, removed whatever happens. Blocks up to `timeout` s."""
    expires = str(int(time.time() + timeout + 60))  # a minute past its deadline: a leftover
    labels = {"agent-sandbox.owner": "lesson-04", "agent-sandbox.expires": expires}
    container = client.containers.create(
        IMAGE, COMMAND, stdin_open=True, labels=labels, **RESTRICTIONS
    )
    output, truncated, timed_out = {1: bytearray(), 2: bytearray()}, False, threading.Event()
    deadline = threading.Timer(timeout, lambda: (timed_out.set(), kill(container)))
    try:
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        with container.attach_socket(params=params)._sock as sock:  # before start: miss nothing
            container.start()
            deadline.start()
            with contextlib.suppress(OSError):  # it may end before it has read all of its code
                sock.sendall(code.encode())
                sock.shutdown(socket.SHUT_WR)  # end of file: python runs what it read
            for stream, data in frames_iter(sock, tty=False):  # stream 1 is stdout, 2 stderr
                room = MAX_OUTPUT_BYTES - len(output[stream])
                output[stream] += data[:room]
                if len(data) > room and not truncated:  # stop what we would throw away, from
                    truncated = True  # another thread: a kill waits for us to read the output
                    deadline.cancel()  # it ends for its output now: not for its time as well
                    threading.Thread(target=kill, args=(container,)).start()
        exit_code = container.wait()["StatusCode"]
        container.reload()  # what the engine recorded: was it killed for its memory?
        oom_killed = container.attrs["State"]["OOMKilled"]
    finally:
        deadline.cancel()
        container.remove(force=True)
    stdout, stderr = (output[stream].decode(errors="replace") for stream in (1, 2))
    return RunResult(stdout, stderr, exit_code, timed_out.is_set(), oom_killed, truncated)


def sweep() -> int:
    """Remove the sandbox containers past their expiry, whoever made them: return how many."""
    # sparse: the list's own labels, not an inspect of each (one removed meanwhile is NotFound)
    found = client.containers.list(all=True, sparse=True, filters={"label": "agent-sandbox.owner"})
    labels = [(c, c.attrs.get("Labels") or {}) for c in found]
    expired = [c for c, label in labels if int(label.get("agent-sandbox.expires", 0)) < time.time()]
    for container in expired:
        with contextlib.suppress(docker.errors.APIError):  # gone already, or going
            container.remove(force=True)
    return len(expired)


threads = ThreadPoolExecutor(MAX_CONCURRENT)  # run() off the event loop; other runs wait in line


async def arun(code: str, timeout: float = TIMEOUT_SECONDS) -> RunResult:
    return await asyncio.get_running_loop().run_in_executor(threads, run, code, timeout)


@tool
async def run_python(code: str) -> str:
    """Run a Python 3.11 program in a sandbox: standard library only, no network, no files kept,
    10 s, 128 MB. Print what you need to see: stdout, stderr and exit code come back as JSON."""
    return json.dumps(asdict(await arun(code)))


SYSTEM_PROMPT = "To compute, call run_python with a program that prints the result. Answer from it."
model = make_chat_model(os.getenv("OPENAI_API_KEY"), offline_model=OfflineToolCallingModel)
agent = create_agent(model, [run_python], system_prompt=SYSTEM_PROMPT)
app = FastAPI(title="Sandboxed tools")


@app.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@app.post("/v1/tools/python")
async def run_code(
    code: Annotated[str, Body(min_length=1, max_length=20_000)],
    timeout_seconds: Annotated[float, Body(gt=0, le=30)] = TIMEOUT_SECONDS,
) -> RunResult:
    return await arun(code, timeout_seconds)


@app.post("/v1/agent")
async def ask(query: Annotated[str, Body(min_length=1, max_length=4000, embed=True)]) -> dict:
    messages = (await agent.ainvoke({"messages": [("user", query)]}))["messages"]
    runs = [json.loads(message.text) for message in messages if message.type == "tool"]
    return {"answer": messages[-1].text.strip(), "runs": runs}


if __name__ == "__main__":
    print(f"Removed {sweep()} expired sandbox container(s)")
    uvicorn.run(app, host=os.getenv("HOST", "127.0.0.1"), port=int(os.getenv("PORT", "8000")))
