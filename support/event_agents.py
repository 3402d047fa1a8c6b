"""Lesson 07's system as local processes: each agent and the gateway run the same commands the
containers run (`python -m lesson07.event_agents triage`, ...), against a real redis-server; and
what a client of the gateway does (ask, wait for the answer, read progress)."""

import hashlib
import hmac
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
from support.lessons import ROOT, run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for

AGENTS = ROOT / "code" / "lesson07" / "event_agents.py"
GATEWAY = ROOT / "code" / "lesson07" / "gateway.py"
SERVICES = ("triage", "concepts", "debug", "exercise", "progress")


def gateway_process(env: dict[str, str], logs: Path) -> ServerProcess:
    """The gateway (code/lesson07/gateway.py) with `env` on a free port of its own, ready once
    /ready answers, its output in logs/gateway-PORT.log; `with` starts and stops it."""
    port = free_port()
    return ServerProcess(
        [sys.executable, *run_module(str(GATEWAY))],
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
        self.token_key = uuid.uuid4().hex  # the gateway's TOKEN_KEY, for enrol() below
        self.base_env = offline_environment(
            REDIS_URL=redis_url,
            TOKEN_KEY=self.token_key,
            OFFLINE_TOKEN_DELAY_MS=2,
            VISIBILITY_TIMEOUT_MS=1500,
            MAX_DELIVERIES=3,
            # Every test enrols students of its own, all from 127.0.0.1: far more than a person.
            ENROLMENTS_PER_MINUTE=10_000,
            **({"REDIS_PASSWORD": password} if password else {}),
        )

    def start(self, service: str, **env: str):
        heartbeat = self.logs / f"{service}-{uuid.uuid4().hex[:6]}.heartbeat"
        log = self.logs / f"{service}-{len(self.processes[service])}.log"
        # Forked ready-imported (support/zygote.py): the agents' command, without paying for
        # LangChain's imports at each of the suite's twenty-odd starts.
        process = zygote.start(
            [sys.executable, *run_module(str(AGENTS)), service],
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


def enrolled(system, student_id: str) -> str:
    """The student's token: POST /v1/students the first time (201 expected), then kept.
    `system` is anything with `gateway` (an httpx client) and `tokens`."""
    if student_id not in system.tokens:
        response = system.gateway.post("/v1/students", json={"student_id": student_id})
        assert response.status_code == 201, response.text
        system.tokens[student_id] = response.json()["student_token"]
    return system.tokens[student_id]


def ask(system, student_id: str, text: str, **headers: str) -> str:
    """POST a question as the student, enrolled first if need be, 202 expected. `system` is
    anything with `gateway` (an httpx client), `tokens` and `students`."""
    response = system.gateway.post(
        "/v1/questions",
        json={"student_id": student_id, "text": text},
        headers={**bearer(enrolled(system, student_id)), **headers},
    )
    assert response.status_code == 202, response.text
    question_id = response.json()["id"]
    system.students[question_id] = student_id
    return question_id


def enrol(system, student_id: str) -> None:
    """Give a student a token straight in Redis, as the gateway's POST /v1/students would (the
    token's HMAC under the gateway's TOKEN_KEY), for a test that publishes events by hand."""
    token = uuid.uuid4().hex
    digest = hmac.new(system.token_key.encode(), token.encode(), hashlib.sha256).hexdigest()
    system.redis.set(f"student:{student_id}", digest, ex=3600)
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


COMPOSE_FILE = ROOT / "code" / "lesson07" / "compose.yaml"


class ComposeProject:
    """Lesson 07's Compose project (code/lesson07/compose.yaml) under a name and a port of its
    own, for the container tests and `make bench-pubsub`. `spelling` is ("docker", "compose") or
    Debian's ("docker-compose",)."""

    def __init__(self, prefix: str, spelling: tuple[str, ...] = ("docker", "compose"), **env: str):
        from support.ports import free_port

        self.name, self.port = f"{prefix}-{uuid.uuid4().hex[:8]}", free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The project's own secrets (make lesson-07 writes the default ones): a Redis user per
        # service, the token key, and the operator's password, which redis_cli() logs in with.
        self.secret_dir = Path(tempfile.mkdtemp(prefix="lesson07-"))  # removed by down()
        secrets = self.secret_dir / "secrets"
        users = ROOT / "code" / "lesson07" / "redis_users.py"
        subprocess.run([sys.executable, str(users), str(secrets)], check=True, timeout=60)
        self.password = (secrets / "operator").read_text()
        self.env = {
            **os.environ,
            "LESSON07_PORT": str(self.port),
            "LESSON07_SECRETS": str(secrets),
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
        """redis-cli in the Redis container, as the operator (every right; in no container)."""
        auth = f"REDISCLI_AUTH={self.password}"
        return self.compose(
            "exec", "-T", "-e", auth, "redis", "redis-cli", "--user", "operator", *args
        )

    def down(self) -> None:
        """`make lesson-07-down` for this project: containers, network and volume removed."""
        try:
            self.run(
                "make", "--no-print-directory", "lesson-07-down", f"LESSON07_PROJECT={self.name}"
            )
        finally:
            self.remove_secrets()

    def remove_secrets(self) -> None:
        """The project's secrets folder goes (down() does it; a test that downs the project with
        Compose v1 itself calls it)."""
        shutil.rmtree(self.secret_dir, ignore_errors=True)
