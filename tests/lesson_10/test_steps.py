"""Lesson 10's steps as docs/10-durable-runs.md has a learner run them, each compared with the doc.

Step 1 is a script: it is run with the answers the doc types at its question, and prints what the
doc shows after `make lesson-10 STEP=1`'s banner (`make lesson-10-banner`). It is killed with
`kill -9` at its question, as the doc's block is typed, then resumed by a new process on a real
PostgreSQL. Steps 2 to 5 are servers: the doc's blocks are typed into one bash, in order
(variables carry from block to block), against the step started as `make lesson-10 STEP=K` starts
it (step 5: two replicas, on the doc's two ports). `pgrep` in that bash names the step's server
(the doc's `pgrep -f` would also find any other copy running on this machine); before a block that
reads a run's state, the bash waits until the run is not `running` any more, as a person reading
the doc would. Sandboxes run in real containers (the runner's limits need only Python in the
image), counted by the engine's events.
"""

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import psycopg
import pytest

from support.commands import find_command
from support.lessons import ROOT, run_module
from support.ports import free_port
from support.server import ServerProcess, offline_environment
from support.waiting import wait_for
from tests.lesson_10.conftest import OWNER, SANDBOX_IMAGE
from tests.support.doc_session import Block, Terminal, differences, section_steps

# A lesson's own check (its `make` target, in CI's queue), not `make test`'s: see tests/conftest.py.
pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "10-durable-runs.md"
SECTIONS = {1: "1.", 2: "2.", 3: "3.", 4: "4.", 5: "5."}
FILES = {
    1: "code/lesson10/step1_interrupt.py",
    2: "code/lesson10/step2_api.py",
    3: "code/lesson10/step3_owner.py",
    4: "code/lesson10/step4_idempotent.py",
    5: "code/lesson10/step5_lease.py",
}
PROMPT = "Approve? [y/N] "
ANSWER = "1267650600228229401496703205376"


def banner(step: int, **env) -> str:
    """What `make lesson-10 STEP=K` prints before the step starts (its image lines aside)."""
    done = subprocess.run(
        ["make", "-s", "--no-print-directory", "lesson-10-banner", f"STEP={step}"],
        cwd=ROOT, env={**os.environ, "DATABASE_URL": "set", **env}, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout


def step_env(**settings) -> dict[str, str]:
    return offline_environment(SANDBOX_IMAGE=SANDBOX_IMAGE, SANDBOX_OWNER=OWNER, **settings)


class Script:
    """A step's script in a terminal of its own: what it printed, with what was typed at it."""

    def __init__(self, step: int, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, *run_module(FILES[step])], cwd=ROOT, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.printed, self.ended = "", False
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := os.read(self.process.stdout.fileno(), 4096):
            with self.changed:
                self.printed += chunk.decode()
                self.changed.notify_all()
        with self.changed:
            self.ended = True
            self.changed.notify_all()

    def at_prompt(self, timeout: float = 120) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: self.printed.endswith(PROMPT) or self.ended, timeout)
        assert ok and not self.ended, f"no question:\n{self.printed}"

    def type(self, answer: str) -> None:
        with self.changed:
            self.printed += answer + "\n"  # the terminal's echo
        self.process.stdin.write((answer + "\n").encode())
        self.process.stdin.flush()

    def play(self, shown: str) -> str:
        """Answer each question as the doc's output does; a question left unanswered at the end
        of the doc's block leaves the script waiting there. What it printed, with the answers."""
        answers = re.findall(r"^Approve\? \[y/N\] ?(.*)$", shown, re.M)
        for i, answer in enumerate(answers):
            self.at_prompt()
            if not answer and i == len(answers) - 1 and shown.rstrip().endswith("[y/N]"):
                return self.printed
            self.type(answer)
        assert self.process.wait(120) == 0, self.printed
        with self.changed:
            self.changed.wait_for(lambda: self.ended, 30)
        return self.printed


def script_steps(step: int):
    return section_steps(DOC, SECTIONS[step])


def test_a_rejected_call_never_runs_and_the_answer_says_so(engine, postgres_dsn):
    script = Script(1, step_env(DATABASE_URL=postgres_dsn, THREAD_ID="rejected"))
    script.at_prompt()
    script.type("n")
    assert script.process.wait(120) == 0
    assert "rejected the tool call for `run_python` with reason: the person said no" in (
        script.printed
    )


def kill_as_typed(block: Block, pid: int) -> None:
    """The doc's `kill -9 $(pgrep -f ...)` typed into bash, whose pgrep names `pid`."""
    terminal = Terminal(ROOT, dict(os.environ))
    try:
        terminal.run(f"pgrep() {{ echo {pid}; }}")
        _, status = terminal.run(block.body)
    finally:
        terminal.close()
    assert status == 0


def test_step_1_killed_at_its_question_resumes_from_postgres(engine, postgres_dsn):
    """The doc's four blocks: ask (and wait), kill -9, run again and approve, run once more."""
    steps = script_steps(1)
    assert [c.body for c, _ in steps] == [
        "make lesson-10 STEP=1",
        "kill -9 $(pgrep -f step1_interrupt)",
        "make lesson-10 STEP=1",
        "make lesson-10 STEP=1",
    ]
    (_, first), (kill, _), (_, second), (_, third) = steps
    env = step_env(DATABASE_URL=postgres_dsn)
    waiting = Script(1, env)
    printed = waiting.play(first.body)
    assert not (problems := differences(first.body, banner(1) + printed)), problems
    kill_as_typed(kill, waiting.process.pid)
    assert waiting.process.wait(30) == -signal.SIGKILL
    for shown in (second, third):
        printed = Script(1, env).play(shown.body)
        assert not (problems := differences(shown.body, banner(1) + printed)), problems


# --- Steps 2 to 5: servers, and the doc's blocks typed at them ----------------------------------


class Step:
    """Step K's server as `make lesson-10 STEP=K` runs it, started again after a kill."""

    def __init__(self, step: int, dsn: str, tmp_path, path: str | None = None, name: str = "a"):
        self.step, self.port, self.tmp_path, self.name = step, free_port(), tmp_path, name
        self.path = path or FILES[step]
        self.env = step_env(DATABASE_URL=dsn, HOST="127.0.0.1", PORT=self.port)
        self.server: ServerProcess | None = None
        self.pid_file = tmp_path / f"server-{name}.pid"
        self.starts = 0

    def start(self) -> str:
        """Start it (again); the banner and its log, as the learner's first terminal shows them."""
        self.starts += 1
        self.server = ServerProcess(
            [sys.executable, self.path], cwd=ROOT, env=self.env, port=self.port,
            ready_path="/openapi.json", ready_timeout=60,
            log_path=self.tmp_path / f"server-{self.name}-{self.starts}.log",
        ).start()  # fmt: skip
        self.pid_file.write_text(str(self.server.process.pid))
        log = self.server.log_path.read_text()
        log = re.sub(r'(?m)^INFO: .* "GET /openapi.json HTTP/1.1" 200 OK\n', "", log)  # our probe
        return banner(self.step, PORT=str(self.port)) + log

    def running(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    def as_the_doc(self, text: str) -> str:
        return text.replace(f":{self.port}", ":8000")


WAIT_WHILE_RUNNING = """for _ in $(seq 600); do
  case "$(curl -s localhost:8000/v1/runs/$RUN -H "Authorization: Bearer $TOKEN")" in
    *'"state":"running"'*) sleep 0.2 ;;
    *) break ;;
  esac
done"""
# A block that reads a run's state: `STATE=$(curl ...`, or a `curl` of the run's URL alone.
READS_STATE = re.compile(r"^(STATE=\$\()?curl -s localhost:\d+/v1/runs/\$RUN[ ;)]")


def type_blocks(step: Step, blocks: list[tuple[Block, Block | None]]) -> None:
    """Type each block into one bash, as written (its port mapped), and compare what it prints."""
    terminal = Terminal(ROOT, step.env)
    at_port = lambda text: text.replace("localhost:8000", f"localhost:{step.port}")  # noqa: E731
    try:
        terminal.run(f'pgrep() {{ cat "{step.pid_file}"; }}')
        for command, shown in blocks:
            if command.body.startswith("make lesson-10 STEP="):
                printed = step.start()
            else:
                if not step.running():  # killed by the block before: the doc starts it again
                    step.start()
                if READS_STATE.match(command.body):
                    terminal.run(at_port(WAIT_WHILE_RUNNING), timeout=180)
                printed, status = terminal.run(at_port(command.body), timeout=180)
                assert status == 0, f"docs/10:{command.line} exited {status}:\n{printed}"
                if "kill -9" in command.body:  # a SIGKILL is sent, not yet done: wait for its end,
                    step.server.process.wait(30)  # or the next block finds it "running" and dead
            if shown is not None:
                problems = differences(shown.body, step.as_the_doc(printed))
                assert not problems, f"docs/10:{command.line}\n{problems}"
    finally:
        terminal.close()


@pytest.fixture
def step_factory(postgres_dsn, tmp_path):
    made = []

    def make(number: int) -> Step:
        made.append(Step(number, postgres_dsn, tmp_path))
        return made[-1]

    yield make
    for step in made:
        step.stop()


def test_step_2_answers_the_docs_commands_across_a_kill(engine, step_factory):
    blocks = script_steps(2)
    assert blocks[0][0].body == "make lesson-10 STEP=2"
    assert any(c.body.startswith("kill -9 $(pgrep -f step2_api)") for c, _ in blocks)
    type_blocks(step_factory(2), blocks)


def test_step_3_shows_a_run_to_its_owner_only(engine, step_factory):
    blocks = script_steps(3)
    assert [c.body.split()[0] for c, _ in blocks] == ["RUN_JSON=$(curl", "STATE=$(curl"]
    step = step_factory(3)
    step.start()
    type_blocks(step, blocks)


def start_a_slow_run(client: httpx.Client) -> tuple[str, Callable[[str], dict | None]]:
    """Start a run and, at its question, approve the call edited into a program that sleeps 4 s:
    time to kill the server while the program runs. The run's id, and `state(wanted)`: the run
    while it is in that state, else None (for wait_for)."""
    created = client.post("/v1/runs", json={"query": "What is 2**100?"}).json()
    auth = {"Authorization": f"Bearer {created['owner_token']}"}
    url = f"/v1/runs/{created['run_id']}"

    def state(wanted):
        body = client.get(url, headers=auth).json()
        return body if body["state"] == wanted else None

    pending = wait_for(lambda: state("waiting_for_approval"), timeout=60)["pending"]
    slow = {"code": "import time; time.sleep(4); print(2**100)"}
    decision = {"call_id": pending["call_id"], "decision": "edit", "args": slow}
    assert client.post(f"{url}/decisions", json=decision, headers=auth).status_code == 202
    return created["run_id"], state


def test_step_3_runs_a_replayed_call_twice(engine, step_factory, sandbox_starts):
    """Why step 4 exists: killed while run_python runs, step 3's worker replays the step once it
    is started again, and the program runs a second time."""
    starts = sandbox_starts()
    step = step_factory(3)
    step.start()
    with httpx.Client(base_url=step.server.url, timeout=30) as client:
        _, state = start_a_slow_run(client)
        running = {"label": [f"agent-sandbox.owner={OWNER}"], "status": "running"}
        wait_for(lambda: engine.containers.list(filters=running), timeout=60, what="the sandbox")
        step.server.process.kill()
        step.server.process.wait(30)
        step.start()
        assert f"printed {ANSWER}" in wait_for(lambda: state("done"), timeout=120)["answer"]
    assert sorted(starts.per("agent-sandbox.owner").values()) == [2]


def test_step_4_answers_the_docs_commands_and_runs_the_call_once(
    engine, step_factory, sandbox_starts
):
    """Section 4 starts a run with section 3's two blocks, then kills step 4 while its program
    sleeps in the sandbox: the restarted step reads that container, starts no other."""
    starts = sandbox_starts()
    create, state = script_steps(3)
    assert create[0].body.startswith("RUN_JSON=$(curl") and state[0].body.startswith("STATE=$(")
    blocks = script_steps(4)
    assert any(c.body.endswith("--format '{{.Names}} {{.Status}}'") for c, _ in blocks)
    step = step_factory(4)
    step.start()
    type_blocks(step, [create, state, *blocks])
    assert step.starts == 2  # killed once, started again
    assert sorted(starts.per("agent-sandbox.owner").values()) == [1]


def wait_until_done(replicas: list[Step], run_id: str, token: str) -> None:
    """Until the replica still alive says the run is done: however long that takes under load."""
    (alive,) = [r for r in replicas if r.running()]
    with httpx.Client(base_url=alive.server.url, timeout=30) as client:
        auth = {"Authorization": f"Bearer {token}"}
        done = lambda: client.get(f"/v1/runs/{run_id}", headers=auth).json()["answer"]  # noqa: E731
        wait_for(done, timeout=180, what="the other replica ending the run")


def test_step_5_a_killed_replicas_run_is_taken_on_by_the_other_and_runs_once(
    engine, postgres_dsn, tmp_path, sandbox_starts
):
    """Section 5 with two replicas, on the doc's ports 8000 and 8001: a run started on one, the
    slow program sent to the other, the replica holding the lease killed by the pid PostgreSQL
    names (asked with Debian's psql, as the doc says for its package), and the other takes the
    run on once the lease has run out, reading the killed replica's container."""
    starts = sandbox_starts()
    *typed, (remove, _) = script_steps(5)
    assert remove.body == "docker rm -f -v lesson10-postgres"  # run by the docker test below
    replicas = [Step(5, postgres_dsn, tmp_path, name=name) for name in ("a", "b")]
    psql = find_command("psql")
    assert psql, "psql comes with Debian's postgresql, as the tests' PostgreSQL does"
    docker_psql = "docker exec lesson10-postgres psql -U postgres"

    def as_here(text: str) -> str:
        text = text.replace("localhost:8000", f"localhost:{replicas[0].port}")
        text = text.replace("localhost:8001", f"localhost:{replicas[1].port}")
        return text.replace(docker_psql, f'{psql} "$DATABASE_URL"')

    terminal = Terminal(ROOT, replicas[0].env)
    try:
        for replica in replicas:
            replica.start()
        for command, shown in typed:
            if READS_STATE.match(command.body):
                terminal.run(as_here(WAIT_WHILE_RUNNING), timeout=180)
            if command.body.startswith("sleep 15\n"):  # the doc's wait for the lease to run out:
                wait_until_done(replicas, *terminal.run('echo "$RUN $TOKEN"')[0].split())
            printed, status = terminal.run(as_here(command.body), timeout=300)
            assert status == 0, f"docs/10:{command.line} exited {status}:\n{printed}"
            if "kill -9" in command.body:
                (killed,) = [
                    r for r in replicas if f"killed replica {r.server.process.pid}" in printed
                ]
                assert killed.server.process.wait(30) == -signal.SIGKILL
            if shown is not None:
                problems = differences(shown.body, printed)
                assert not problems, f"docs/10:{command.line}\n{problems}"
        run_id = terminal.run('echo "$RUN"')[0].strip()
        logs = {r.name: r.server.log_path.read_text() for r in replicas}
        took = {name for name, log in logs.items() if f"takes run {run_id} on" in log}
        assert took == {"a", "b"}, logs  # the killed replica, then the other
    finally:
        terminal.close()
        for replica in replicas:
            replica.stop()
    assert sorted(starts.per("agent-sandbox.owner").values()) == [1]


# --- Before you start: the two ways to a PostgreSQL, as the doc types them ----------------------


def before_you_start() -> tuple[Block, Block]:
    """The doc's two set-ups: Docker's postgres:15, and Debian's package."""
    docker_run, debian = [b for b, _ in section_steps(DOC, "Before you start")]
    assert docker_run.body.startswith("docker run") and "sudo apt install postgresql" in debian.body
    return docker_run, debian


def database_url(block: Block, port: int) -> str:
    """The DATABASE_URL the block exports, on `port` instead of 5432."""
    url = re.search(r"^export DATABASE_URL=(\S+)$", block.body, re.M)[1]
    return url.replace("127.0.0.1:5432/", f"127.0.0.1:{port}/")


def approve_once(url: str) -> str:
    script = Script(1, step_env(DATABASE_URL=url))
    return script.play(f"{PROMPT}y\n")


def test_debians_postgresql_as_the_doc_sets_it_up(engine, postgres_server, postgres_dsn):
    """The package's server (the tests' own, from the same package) given the doc's password by
    the doc's statement, then step 1 run on the URL the doc exports."""
    _, debian = before_you_start()
    statement = re.search(r'psql -c "(.*)"$', debian.body, re.M)[1]
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(statement)  # ALTER USER postgres PASSWORD 'lesson10'
    try:
        assert ANSWER in approve_once(database_url(debian, postgres_server.port))
    finally:
        with psycopg.connect(database_url(debian, postgres_server.port), autocommit=True) as c:
            c.execute(f"ALTER USER postgres PASSWORD '{postgres_server.password}'")


def test_dockers_postgres_15_as_the_doc_starts_it(engine, tmp_path):
    """The doc's `docker run` as written, but for its name and host port (this machine's own
    5432 may be taken), then step 1 on the URL it exports; and step 5's last block removes it."""
    docker_run, _ = before_you_start()
    port, name = free_port(), f"lesson10-postgres-test-{os.getpid()}"
    command = docker_run.body.splitlines()[0]
    command = command.replace("--name lesson10-postgres", f"--name {name}")
    command = command.replace("127.0.0.1:5432:5432", f"127.0.0.1:{port}:5432")
    subprocess.run(command, shell=True, check=True, capture_output=True, timeout=120)
    try:
        url = database_url(docker_run, port)

        def accepts() -> bool:
            try:
                with psycopg.connect(url, connect_timeout=2) as connection:
                    connection.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        wait_for(accepts, timeout=120, interval=0.5, what="postgres:15 accepting connections")
        assert ANSWER in approve_once(url)
        (remove, _) = script_steps(5)[-1]
        removed = subprocess.run(
            remove.body.replace("lesson10-postgres", name),
            shell=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert removed.returncode == 0 and removed.stdout.strip() == name, removed.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=60)


def test_the_challenge_a_random_key_runs_the_program_twice(
    engine, postgres_dsn, tmp_path, sandbox_starts
):
    """The doc's challenge done: step 4 with its key line replaced as the challenge says, killed
    while the program sleeps, runs it a second time and leaves the first container behind."""
    challenge = section_steps(DOC, "Challenge")
    assert not challenge  # no shell block: the line to replace is a python block
    text = DOC.read_text(encoding="utf-8")
    line = re.search(r"replace the line\n\n```python\n(.*)\n```\n\nwith `(.*?)`", text)
    source = (ROOT / FILES[4]).read_text(encoding="utf-8")
    assert source.count(line[1] + "\n") == 1, "the challenge's line is not in step 4"
    changed = tmp_path / "10_step4_challenge.py"
    changed.write_text(source.replace(line[1], "    " + line[2]), encoding="utf-8")
    starts = sandbox_starts()
    step = Step(4, postgres_dsn, tmp_path, path=str(changed))
    try:
        step.start()
        with httpx.Client(base_url=step.server.url, timeout=30) as client:
            run_id, state = start_a_slow_run(client)
            mine = {"label": [f"agent-sandbox.request-id={run_id}"]}
            wait_for(lambda: engine.containers.list(filters={**mine, "status": "running"}),
                     timeout=60, what="the sandbox running")  # fmt: skip
            step.server.process.kill()
            step.server.process.wait(30)
            step.start()
            assert f"printed {ANSWER}" in wait_for(lambda: state("done"), timeout=120)["answer"]
        left = engine.containers.list(all=True, filters=mine)
        assert [c.status for c in left] == ["exited"], left  # the killed process's, kept
        for container in left:
            container.remove(force=True)
    finally:
        step.stop()
    assert sorted(starts.per("agent-sandbox.owner").values()) == [2]
