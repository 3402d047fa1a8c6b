"""Lesson 04, step 2: the sandbox as a tool that an agent calls with the programs it writes.

Run it:  make lesson-04 STEP=2   (needs Docker; builds the image agent-sandbox:python first)
"""

import contextlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass

import docker
from docker.utils.socket import frames_iter
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
    container = client.containers.create(IMAGE, COMMAND, stdin_open=True, **RESTRICTIONS)
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


@tool
def run_python(code: str) -> str:
    """Run a Python 3.11 program in a sandbox: standard library only, no network, no files kept,
    10 s, 128 MB. Print what you need to see: stdout, stderr and exit code come back as JSON."""
    return json.dumps(asdict(run(code)))


SYSTEM_PROMPT = "To compute, call run_python with a program that prints the result. Answer from it."
model = make_chat_model(os.getenv("OPENAI_API_KEY"), offline_model=OfflineToolCallingModel)
agent = create_agent(model, [run_python], system_prompt=SYSTEM_PROMPT)
QUESTIONS = ["What is 2**100?", "What is 1/0?"]

if __name__ == "__main__":
    for question in QUESTIONS:
        for message in agent.invoke({"messages": [("user", question)]})["messages"]:
            message.pretty_print()
