"""`make a2a-test`: lesson 12 as `make lesson-12` runs it (the Compose project lesson12 on port
8120: edge, two replicas, Postgres, the client agent, lesson 08's Docker guard), so this module
skips when that project is up already (it takes it down at the end).

docs/12's section 4 typed as written (the client agent relays the remote task's question, both
replicas are killed with SIGKILL while it waits, `make lesson-12` brings them back, the decision
finishes it: the program ran once); then kill -9 of both replicas while a task streams to the A2A
SDK's client, and SubscribeToTask on each replica, reached directly, delivering the rest; the SDK's
client on both bindings through the edge, with owners; and `make lesson-12-down` leaving nothing.
Each `make lesson-12` after a kill costs the replicas' start: the module kills twice, no more.
"""

import asyncio
import os
import subprocess

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types import SendMessageRequest, SubscribeToTaskRequest
from a2a.utils.errors import TaskNotFoundError

from support.lessons import ROOT
from support.waiting import wait_for
from tests.support.a2a import (
    A2A,
    BINDINGS,
    answer,
    first_task,
    run,
    states,
    user_text,
)
from tests.support.a2a import state as state_name
from tests.support.doc_session import Terminal, differences, section_steps
from tests.support.docker_cli import NO_COMPOSE_V2, ContainerStarts, compose_v2, docker

pytestmark = pytest.mark.container

DOC = ROOT / "docs" / "12-agents-over-a2a.md"
URL = "http://127.0.0.1:8120"
PROJECT = "label=com.docker.compose.project=lesson12"
COMPOSE = [
    "docker",
    "compose",
    "-p",
    "lesson12",
    "-f",
    str(ROOT / "code" / "lesson12" / "compose.yaml"),
]
# A learner's terminal: no model key, no lesson settings, not inside another make; each token of
# the offline model takes 200 ms, so that a research answer takes seconds to be killed in.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LESSON12_", "MAKE"))},
    "OFFLINE_TOKEN_DELAY_MS": "200",
    "LEASE_SECONDS": "3",
}


def make(*goals: str) -> str:
    done = subprocess.run(["make", *goals], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def tokens() -> dict[str, str]:
    lines = (ROOT / "code" / "lesson12" / "secrets" / "callers").read_text().splitlines()
    return dict(line.split() for line in lines)


@pytest.fixture(scope="module")
def stack():
    if not compose_v2():
        pytest.skip(NO_COMPOSE_V2)
    if docker("ps", "-aq", "--filter", PROJECT):
        pytest.skip("the Compose project lesson12 is up already: this module would take it down")
    try:
        make("lesson-12")
        yield tokens()
    finally:
        make("lesson-12-down")
    assert docker("ps", "-aq", "--filter", PROJECT) == ""
    assert docker("volume", "ls", "-q", "--filter", PROJECT) == ""
    assert docker("network", "ls", "-q", "--filter", PROJECT) == ""
    assert docker("ps", "-aq", "--filter", "label=agent-sandbox.owner=lesson12") == ""


def kill_both() -> None:
    subprocess.run([*COMPOSE, "kill", "-s", "SIGKILL", "agent1", "agent2"], env=ENV, check=True,
                   capture_output=True, timeout=120)  # fmt: skip


def bring_back() -> None:
    """What `make lesson-12` does after the kill, then the edge sending to a replica again."""
    make("lesson-12")

    def edge_ready():
        try:
            return httpx.get(URL + "/.well-known/agent-card.json", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(edge_ready, timeout=120, interval=0.5, what="the edge sending to a replica again")


def test_section_4_as_written(stack):
    starts = ContainerStarts("agent-sandbox.owner=lesson12")
    blocks = section_steps(DOC, "4.")
    assert blocks[0][0].body == "make lesson-12"
    assert any("kill -s SIGKILL agent1 agent2" in c.body for c, _ in blocks)
    terminal = Terminal(ROOT, ENV)
    try:
        for command, shown in blocks:
            printed, status = terminal.run(command.body, timeout=900)
            assert status == 0, f"docs/12:{command.line} exited {status}:\n{printed}"
            if shown is not None:
                problems = differences(shown.body, printed)
                assert not problems, f"docs/12:{command.line}\n{problems}"
    finally:
        terminal.close()
    assert sum(starts.per("agent-sandbox.request-id").values()) == 1, "the program ran once"


def replica_client(name: str, token: str, card):
    """The SDK's client on one replica, reached at its own address (on the project's network),
    under the name the edge is reached by (the replica checks Host)."""
    network = '{{(index .NetworkSettings.Networks "lesson12_front").IPAddress}}'
    address = docker("inspect", "-f", network, f"lesson12-{name}-1")
    mine = type(card)()
    mine.CopyFrom(card)
    for interface in mine.supported_interfaces:
        interface.url = interface.url.replace("127.0.0.1:8120", f"{address}:8000")
    headers = {"Authorization": f"Bearer {token}", "Host": "127.0.0.1:8120"}
    http = httpx.AsyncClient(headers=headers, timeout=300)
    return ClientFactory(ClientConfig(httpx_client=http)).create(mine), http


async def card_of(token: str):
    async with httpx.AsyncClient() as http:
        return await A2ACardResolver(http, URL).get_agent_card()


def test_kill_9_of_both_while_a_task_streams_then_each_replica_delivers_the_rest(stack):
    seen: list = []

    async def stream_until_killed():
        async with A2A(URL, stack["planner"]).client() as client:
            request = SendMessageRequest(message=user_text("Why use a multi-stage Docker build?"))
            try:
                async for event in client.send_message(request):
                    seen.append(event)
                    said = (
                        str(event.status_update.status.message)
                        if event.HasField("status_update")
                        else ""
                    )
                    if "search_docs answered" in said:  # the answer's model call has begun
                        await asyncio.to_thread(kill_both)
            except Exception as exc:  # noqa: BLE001
                return exc
        return None

    cut = run(stream_until_killed())
    assert cut is not None, "the stream ended as if nothing had happened"
    assert states(seen)[-1] == "working" and not any(e.HasField("artifact_update") for e in seen)
    task_id = first_task(seen).id
    bring_back()
    card = run(card_of(stack["planner"]))

    async def subscribe_on(name: str) -> list:
        client, http = replica_client(name, stack["planner"], card)
        try:
            return [e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id))]
        finally:
            await client.close()
            await http.aclose()

    async def both():  # one replica has taken the task on; the other reads the event log
        return await asyncio.gather(subscribe_on("agent1"), subscribe_on("agent2"))

    for rest in run(both()):
        assert state_name(rest[0].task.status.state) == "working"  # the snapshot first
        assert [e.HasField("artifact_update") for e in rest].count(True) == 1
        assert states(rest)[-1] == "completed"
    task = run(A2A(URL, stack["planner"]).get(task_id))
    assert len(task.artifacts) == 1 and "multi-stage" in answer(task)[0].lower()


@pytest.mark.parametrize("binding", BINDINGS)
def test_the_sdk_client_through_the_edge_on_both_bindings(stack, binding):
    planner = A2A(URL, stack["planner"], binding)
    events = run(planner.send(user_text("What does docker stop do?")))
    assert states(events)[-1] == "completed"
    task_id = first_task(events).id
    assert task_id in {t.id for t in run(planner.list())}
    bob = A2A(URL, stack["bob"], binding)
    with pytest.raises(TaskNotFoundError):
        run(bob.get(task_id))
    assert task_id not in {t.id for t in run(bob.list())}
