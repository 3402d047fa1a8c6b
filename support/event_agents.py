"""Lesson 07's system as local processes: each agent and the gateway run the same commands the
containers run (`python code/07_event_agents.py triage`, ...), against a real redis-server; and what
a client of the gateway does (ask, wait for the answer, read progress)."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from support import zygote
from support.lessons import ROOT
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for

AGENTS = ROOT / "code" / "07_event_agents.py"
GATEWAY = ROOT / "code" / "07_gateway.py"
SERVICES = ("triage", "concepts", "debug", "exercise", "progress")


def gateway_process(env: dict[str, str], logs: Path) -> ServerProcess:
    """The gateway (code/07_gateway.py) with `env` on a free port of its own, ready once /ready
    answers, its output in logs/gateway-PORT.log; `with` starts and stops it."""
    port = free_port()
    return ServerProcess(
        [sys.executable, str(GATEWAY)],
        env={**env, "PORT": str(port)},
        port=port,
        ready_path="/ready",
        log_path=logs / f"gateway-{port}.log",
    )


class System:
    """The five agents as processes, the gateway, and the Redis they share."""

    def __init__(self, redis_url: str, logs: Path, password: str | None = None):
        self.redis_url, self.logs, self.password = redis_url, logs, password
        self.redis = redis.Redis.from_url(
            redis_url,
            password=password,
            decode_responses=True,
            encoding_errors="backslashreplace",  # a test may store bytes that are not UTF-8
        )
        self.processes: dict[str, list] = {s: [] for s in SERVICES}
        self.tokens: dict[str, str] = {}  # student -> the student_token the gateway gave
        self.students: dict[str, str] = {}  # question id -> student
        self.base_env = offline_environment(
            REDIS_URL=redis_url,
            OFFLINE_TOKEN_DELAY_MS=2,
            VISIBILITY_TIMEOUT_MS=1500,
            MAX_DELIVERIES=3,
            **({"REDIS_PASSWORD": password} if password else {}),
        )

    def start(self, service: str, **env: str):
        heartbeat = self.logs / f"{service}-{uuid.uuid4().hex[:6]}.heartbeat"
        log = self.logs / f"{service}-{len(self.processes[service])}.log"
        # Forked ready-imported (support/zygote.py): the agents' command, without paying for
        # LangChain's imports at each of the suite's twenty-odd starts.
        process = zygote.start(
            [sys.executable, str(AGENTS), service],
            env={**self.base_env, "HEARTBEAT_FILE": str(heartbeat), **env},
            log_path=log,
        )
        self.processes[service].append(process)
        wait_for(
            lambda: heartbeat.exists() or process.poll() is not None,
            timeout=60,
            what=f"{service} reading its topic",
        )
        assert process.poll() is None, log.read_text()[-2000:]
        return process

    def stop(self, process) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        for processes in self.processes.values():
            for process in processes:
                self.stop(process)

    def trace(self) -> list[dict]:
        return [fields for _, fields in self.redis.xrange("trace")]

    def publish_raw(self, topic: str, data: str) -> None:
        self.redis.xadd(topic, {"data": data})


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def ask(system, student_id: str, text: str, **headers: str) -> str:
    """POST a question as the student (with the token its first question gave), 202 expected.
    `system` is anything with `gateway` (an httpx client), `tokens` and `students`."""
    response = system.gateway.post(
        "/v1/questions",
        json={"student_id": student_id, "text": text},
        headers={**bearer(system.tokens.get(student_id)), **headers},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    if body.get("student_token"):
        system.tokens[student_id] = body["student_token"]
    system.students[body["id"]] = student_id
    return body["id"]


def enrol(system, student_id: str) -> None:
    """Give a student a token without asking a question, as the gateway's first 202 would."""
    token = uuid.uuid4().hex
    system.redis.set(f"student:{student_id}", hashlib.sha256(token.encode()).hexdigest())
    system.tokens[student_id] = token


def view(system, question_id: str):
    token = system.tokens.get(system.students.get(question_id, ""))
    return system.gateway.get(f"/v1/questions/{question_id}", headers=bearer(token))


def answered(system, question_id: str, timeout: float = 30) -> dict:
    def done():
        found = view(system, question_id).json()
        return found if found["status"] != "pending" else None

    try:
        return wait_for(done, timeout=timeout, what=f"question {question_id} answered")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{what_happened(system, question_id)}") from None


def what_happened(system, question_id: str) -> str:
    """For a question that was never answered: its trace, and the end of each local agent's
    log (a System's; a Compose project has its own logs)."""
    trace = system.trace() if isinstance(system, System) else []
    lines = [f"trace: {t}" for t in trace if question_id in t.get("event_id", "")]
    logs = system.logs if isinstance(system, System) else None
    for log in sorted(logs.glob("*.log")) if logs else ():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        lines += [f"--- {log.name}", *tail]
    return "\n".join(lines)


def student() -> str:
    return f"s-{uuid.uuid4().hex[:10]}"


def progress(system, student_id: str) -> dict:
    token = system.tokens.get(student_id)
    return system.gateway.get(f"/v1/students/{student_id}/progress", headers=bearer(token)).json()


# What each topic accepts (lesson07.contract.ACCEPTS): the type, and one source allowed to send it.
PRODUCERS = {
    "learning.requests": ("learning.question.asked", "/lesson07/gateway"),
    "concept.requests": ("learning.question.routed", "/lesson07/triage"),
    "debug.requests": ("learning.question.routed", "/lesson07/triage"),
    "exercise.requests": ("learning.question.routed", "/lesson07/triage"),
    "progress.requests": ("learning.question.answered", "/lesson07/concepts"),
}


def envelope(event_id: str, data: dict, topic: str = "progress.requests", **attributes) -> str:
    """An event as the producer of `topic` would publish it; `attributes` override any field."""
    event_type, source = PRODUCERS[topic]
    return json.dumps(
        {
            "specversion": "1.0",
            "id": event_id,
            "source": source,
            "type": event_type,
            "datacontenttype": "application/json",
            "data": data,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **attributes,
        }
    )


COMPOSE_FILE = ROOT / "deploy" / "lesson07" / "compose.yaml"


class ComposeProject:
    """Lesson 07's Compose project (deploy/lesson07/compose.yaml) under a name and a port of its
    own, for the container tests and `make bench-pubsub`. `spelling` is ("docker", "compose") or
    Debian's ("docker-compose",)."""

    def __init__(self, prefix: str, spelling: tuple[str, ...] = ("docker", "compose"), **env: str):
        from support.ports import free_port

        self.name, self.port = f"{prefix}-{uuid.uuid4().hex[:8]}", free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Redis's password, a secret of the project's own (make lesson-07 writes the default one).
        self.password = uuid.uuid4().hex
        self.secret_dir = Path(tempfile.mkdtemp(prefix="lesson07-"))  # removed by down()
        secret = self.secret_dir / "redis-password"
        secret.write_text(self.password)
        secret.chmod(0o644)  # bind-mounted: the containers' users read it
        self.env = {
            **os.environ,
            "LESSON07_PORT": str(self.port),
            "LESSON07_REDIS_PASSWORD_FILE": str(secret),
            **env,
        }
        self.command = (*spelling, "-p", self.name, "-f", str(COMPOSE_FILE))

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Any command with the project's environment (compose, make), from the repository root."""
        done = subprocess.run(
            args, input=stdin, capture_output=True, text=True, env=self.env, timeout=300, cwd=ROOT
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-2000:]}")
        return done.stdout

    def compose(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run(*self.command, *args, stdin=stdin, check=check)

    def redis_cli(self, *args: str) -> str:
        auth = f"REDISCLI_AUTH={self.password}"
        return self.compose("exec", "-T", "-e", auth, "redis", "redis-cli", *args)

    def down(self) -> None:
        """`make lesson-07-down` for this project: containers, network and volume removed."""
        try:
            self.run(
                "make", "--no-print-directory", "lesson-07-down", f"LESSON07_PROJECT={self.name}"
            )
        finally:
            shutil.rmtree(self.secret_dir, ignore_errors=True)
