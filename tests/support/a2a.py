"""The A2A SDK's own client, as the tests of lesson 12 drive an agent with it: a client we did not
write, on either binding (JSONRPC or HTTP+JSON), with a caller's bearer token."""

import asyncio
import contextlib

import httpx
from a2a.client import ClientConfig, create_client
from a2a.helpers import get_data_parts, get_text_parts, new_data_message, new_text_message
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)

BINDINGS = ["JSONRPC", "HTTP+JSON"]


def state(value: int) -> str:
    return TaskState.Name(value).removeprefix("TASK_STATE_").lower().replace("_", "-")


def user_text(text: str, **ids) -> object:
    message = new_text_message(text, **ids)
    message.role = Role.ROLE_USER
    return message


def user_data(data, **ids) -> object:
    message = new_data_message(data, **ids)
    message.role = Role.ROLE_USER
    return message


class A2A:
    """One client of one caller on one binding; every call runs to its end (events as a list)."""

    def __init__(self, url: str, token: str | None = None, binding: str = "JSONRPC", **headers):
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url, self.binding, self.headers = url, binding, headers

    @contextlib.asynccontextmanager
    async def client(self, streaming: bool = True):
        http = httpx.AsyncClient(headers=self.headers, timeout=120)
        config = ClientConfig(
            httpx_client=http, streaming=streaming, supported_protocol_bindings=[self.binding]
        )
        client = await create_client(self.url, client_config=config)
        try:
            yield client
        finally:
            await client.close()
            await http.aclose()

    async def send(self, message, streaming: bool = True) -> list:
        async with self.client(streaming) as client:
            return [e async for e in client.send_message(SendMessageRequest(message=message))]

    async def get(self, task_id: str):
        async with self.client() as client:
            return await client.get_task(GetTaskRequest(id=task_id))

    async def list(self):
        async with self.client() as client:
            return (await client.list_tasks(ListTasksRequest())).tasks

    async def cancel(self, task_id: str):
        async with self.client() as client:
            return await client.cancel_task(CancelTaskRequest(id=task_id))

    async def subscribe(self, task_id: str) -> list:
        async with self.client() as client:
            return [e async for e in client.subscribe(SubscribeToTaskRequest(id=task_id))]


def run(coroutine):
    return asyncio.run(coroutine)


def first_task(events: list):
    return next(e.task for e in events if e.HasField("task"))


def states(events: list) -> list[str]:
    found = []
    for event in events:
        if event.HasField("task"):
            found.append(state(event.task.status.state))
        elif event.HasField("status_update"):
            found.append(state(event.status_update.status.state))
    return found


def pending(task) -> dict:
    """The call an input-required task waits on (its status message's data)."""
    return get_data_parts(task.status.message.parts)[0]


def answer(task) -> tuple[str, list]:
    """The answer artifact's text and its sources (data)."""
    parts = task.artifacts[-1].parts
    data = next(d for d in get_data_parts(parts) if "sources" in d)
    return "\n".join(get_text_parts(parts)), data["sources"]
