"""SendMessage's fast path (code/lesson12/fast_messages.py) answers as the SDK's full path does: two
servers on the same PostgreSQL, one with A2A_FAST_PATH off, get the same requests over plain
HTTP (JSON-RPC and HTTP+JSON), and their answers are compared whole, with the task as each then
stores it (GetTask; its version and its event log, read from the database). Ids each server made
up (task, context, message, artifact: uuids) and timestamps are named by their order of
appearance, so an answer that names the wrong task still differs. Both agents are served: the
research agent (DurableHandler: its owners, caps and decisions) and the echo agent (the SDK's
handler with the fast path, as `make bench-a2a` measures it). The fast server's log says which
messages took the fast path; the full server's, that none did."""

import re
import uuid

import httpx
import psycopg
import pytest
from a2a.types import StreamResponse
from google.protobuf.json_format import MessageToDict

from tests.lesson_12.conftest import Replicas

VERSION = {"A2A-Version": "1.0"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
FAST = "on the fast path"
QUESTION = "Why use a multi-stage Docker build?"
NEEDS_A_CALL = "What is 2**100?"


@pytest.fixture(scope="module")
def database(postgres_server):
    if not postgres_server.running():
        postgres_server.kill()
        postgres_server.start()
    made = []

    def create() -> str:
        made.append(postgres_server.create_database())
        return made[-1]

    yield create
    for dsn in made:
        if postgres_server.running():
            postgres_server.drop_database(dsn.rsplit("/", 1)[1])


def pair(database, tokens, tmp_path_factory, **settings):
    fast = Replicas(database(), tmp_path_factory.mktemp("fast"), tokens["_file"],
                    A2A_FAST_PATH_LOG=True, **settings)  # fmt: skip
    full = Replicas(database(), tmp_path_factory.mktemp("full"), tokens["_file"],
                    A2A_FAST_PATH=False, A2A_FAST_PATH_LOG=True, **settings)  # fmt: skip
    return fast, full


@pytest.fixture(scope="module")
def research(database, tokens, tmp_path_factory):
    servers = pair(database, tokens, tmp_path_factory)
    for server in servers:
        server.start(0)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def echo(database, tokens, tmp_path_factory):
    servers = pair(database, tokens, tmp_path_factory, A2A_AGENT="lesson12.echo:EchoExecutor")
    for server in servers:
        server.start(0)
    yield servers
    for server in servers:
        server.stop()


class Caller:
    """Plain HTTP to one server as one caller; every answer kept, as (status, JSON or text)."""

    def __init__(self, url: str, token: str, dsn: str):
        self.url, self.dsn = url, dsn
        self.headers = {"Authorization": f"Bearer {token}", **VERSION}
        self.answers: list = []

    def _keep(self, response: httpx.Response):
        try:
            body = response.json()
        except ValueError:
            body = response.text
        self.answers.append((response.status_code, body))
        return body

    def rpc(self, method: str, params, request_id="1", raw: bytes | None = None):
        sent = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        r = httpx.post(
            f"{self.url}/a2a/jsonrpc", headers=self.headers, timeout=120,
            **({"content": raw} if raw is not None else {"json": sent}),
        )  # fmt: skip
        return self._keep(r)

    def rest(self, path: str, body: dict | None = None):
        if body is None:
            r = httpx.get(f"{self.url}/a2a/rest{path}", headers=self.headers, timeout=120)
        else:
            r = httpx.post(f"{self.url}/a2a/rest{path}", json=body, headers=self.headers,
                           timeout=120)  # fmt: skip
        return self._keep(r)

    def send(self, message: dict, request_id="1"):
        return self.rpc("SendMessage", {"message": message}, request_id)

    def get(self, task_id: str):
        return self.rpc("GetTask", {"id": task_id}, "get")

    def rows(self, task_id: str) -> None:
        """The task as the server stored it: its version and its events, in their order."""
        with psycopg.connect(self.dsn) as conn:
            query = "SELECT version FROM task_versions WHERE task_id = %s"
            version = conn.execute(query, (task_id,)).fetchone()
            query = (
                "SELECT task_version, event_data FROM task_events WHERE task_id = %s ORDER BY seq"
            )
            events = conn.execute(query, (task_id,)).fetchall()
        logged = [(v, MessageToDict(StreamResponse.FromString(bytes(e)))) for v, e in events]
        self.answers.append(("stored", version, logged))


def text(words: str, **ids) -> dict:
    return {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"text": words}], **ids}


def data(value: dict, **ids) -> dict:
    return {"messageId": str(uuid.uuid4()), "role": "ROLE_USER", "parts": [{"data": value}], **ids}


def normal(value, names: dict):
    """The answer with each uuid named by its order of first appearance and each time alike."""
    if isinstance(value, dict):
        return {k: normal(v, names) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normal(v, names) for v in value]
    if isinstance(value, str):
        value = UUID.sub(lambda m: names.setdefault(m.group(), f"<id {len(names) + 1}>"), value)
        return TIME.sub("<time>", value)
    return value


def fast_lines(server: Replicas) -> int:
    return server.logs().count(FAST)


def compare(servers, tokens, scenario) -> int:
    """`scenario(planner, bob)` on each server; the answers equal once normalized. The number of
    messages the fast server answered on its fast path."""
    fast, full = servers
    before = fast_lines(fast), fast_lines(full)
    answers = []
    for server in servers:
        planner = Caller(server.url(0), tokens["planner"], server.dsn)
        bob = Caller(server.url(0), tokens["bob"], server.dsn)
        scenario(planner, bob)
        answers.append(normal(planner.answers + bob.answers, {}))
    assert answers[0] == answers[1]
    assert fast_lines(full) == before[1]  # none: its fast path is off
    return fast_lines(fast) - before[0]


def task_of(answer: dict) -> dict:
    return answer["result"]["task"]


def pending(task: dict) -> dict:
    return next(p["data"] for p in task["status"]["message"]["parts"] if "data" in p)


def test_a_research_answer_and_its_stored_task(research, tokens):
    def scenario(planner, bob):
        task = task_of(planner.send(text(QUESTION)))
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
        planner.get(task["id"])
        planner.rows(task["id"])
        # A follow-up to a task that ended, with and without its context.
        planner.send(text("and then?", taskId=task["id"]))
        planner.send(text("and then?", taskId=task["id"], contextId=task["contextId"]))
        # The same over HTTP+JSON, and the task as that binding shows it.
        rest = planner.rest("/message:send", {"message": text(QUESTION)})
        planner.rest(f"/tasks/{rest['task']['id']}")

    assert compare(research, tokens, scenario) == 2


def test_input_required_then_a_decision_resumes_the_task(research, tokens):
    def scenario(planner, bob):
        task = task_of(planner.send(text(NEEDS_A_CALL)))
        assert task["status"]["state"] == "TASK_STATE_INPUT_REQUIRED", task
        call = pending(task)
        ids = {"taskId": task["id"], "contextId": task["contextId"]}
        # Bad decisions: refused, and the task still waits.
        planner.send(data({"call_id": "call_99", "decision": "approve"}, **ids))
        planner.send(data({"call_id": call["call_id"], "decision": "maybe"}, **ids))
        planner.send(text("approve", **ids))
        # Another caller's message to it, and its look at it: no such task.
        bob.send(data({"call_id": call["call_id"], "decision": "approve"}, **ids))
        bob.get(task["id"])
        planner.get(task["id"])
        # The decision, with no context (the task's is taken): the task ends rejected.
        decision = {"call_id": call["call_id"], "decision": "reject", "message": "no, thanks"}
        done = task_of(planner.send(data(decision, taskId=task["id"])))
        assert done["status"]["state"] == "TASK_STATE_REJECTED", done
        planner.send(data(decision, **ids))  # decided already: the task has ended
        planner.get(task["id"])
        planner.rows(task["id"])

    # The question and the decision that resumes it.
    assert compare(research, tokens, scenario) == 2


def test_refusals_before_any_task(research, tokens):
    def scenario(planner, bob):
        unknown = str(uuid.uuid4())
        planner.send(text("hello", taskId=unknown))  # unknown task
        planner.send(text("hello", taskId="t" * 40))  # an id no task can have
        planner.send(text("hello", contextId="c" * 40))
        html = {"messageId": "m-ct", "role": "ROLE_USER",
                "parts": [{"text": "<b>hi</b>", "mediaType": "text/html"}]}  # fmt: skip
        planner.send(html)  # a media type the card does not list
        planner.rest("/message:send", {"message": html})
        planner.send({"messageId": "m-9", "role": "ROLE_USER", "parts": [{"text": "x"}] * 9})
        planner.send({"role": "ROLE_USER", "parts": "not a list"})  # malformed params
        planner.rpc("SendMessage", None, raw=b'{"jsonrpc": "2.0", "id": 1, "method": ')  # not JSON
        planner.rpc("SendMessage", {"message": text("hi")}, request_id={"an": "object"})
        planner.rpc("NoSuchMethod", {"message": text("hi")})
        planner.rest("/message:send", {"message": text("hello", taskId=unknown)})
        planner.rest("/message:send", {"message": "not a message"})

    assert compare(research, tokens, scenario) == 0


def test_the_echo_agent(echo, tokens):
    def scenario(planner, bob):
        task = task_of(planner.send(text("message 1")))
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
        planner.get(task["id"])
        planner.rows(task["id"])
        planner.send(text("again", taskId=task["id"]))  # it has ended
        bob.send(text("mine?", taskId=task["id"]))  # another caller's: not found
        bob.get(task["id"])
        planner.send(text("elsewhere", taskId=task["id"], contextId=str(uuid.uuid4())))
        planner.send(text("hello", taskId=str(uuid.uuid4())))
        html = {"messageId": "m-ct", "role": "ROLE_USER",
                "parts": [{"text": "<b>hi</b>", "mediaType": "text/html"}]}  # fmt: skip
        planner.send(html)
        history = {"message": text("short history"), "configuration": {"historyLength": 0}}
        planner.rpc("SendMessage", history)
        planner.rpc("SendMessage", {"message": text("bad"), "configuration": {"historyLength": -1}})
        rest = planner.rest("/message:send", {"message": text("over HTTP+JSON")})
        planner.rest(f"/tasks/{rest['task']['id']}")
        planner.rows(rest["task"]["id"])
        later = {"message": text("later"), "configuration": {"returnImmediately": True}}
        planner.rpc("SendMessage", later)  # the SDK's path on both: not compared by state
        planner.answers.pop()

    # The first, the one with historyLength 0 and the one over HTTP+JSON.
    assert compare(echo, tokens, scenario) == 3
