"""Lesson 12: the A2A SDK's own client, from the command line: any A2A agent, any of our steps.

  python -m lesson12.client ask "Why use a multi-stage Docker build?"
  python -m lesson12.client decide TASK CALL approve|reject [CONTEXT]   (a task that asks for input)
  python -m lesson12.client get TASK | subscribe TASK | list

A2A_URL (http://127.0.0.1:8000) is where the agent's card is; A2A_TOKEN, when set, is sent as a
bearer token; A2A_BINDING picks the binding: JSONRPC (the default) or HTTP+JSON.
"""

import asyncio
import json
import os
import sys

import httpx
from a2a.client import A2AClientError, ClientConfig, create_client
from a2a.helpers import get_data_parts, get_text_parts, new_data_message, new_text_message
from a2a.types import (
    GetTaskRequest,
    ListTasksRequest,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import A2AError

URL = os.getenv("A2A_URL", "http://127.0.0.1:8000")


def state_name(state: int) -> str:
    return TaskState.Name(state).removeprefix("TASK_STATE_").lower().replace("_", "-")


def show_parts(parts) -> str:
    """Each text part's first line, each data part as JSON (sources: their addresses only)."""
    shown = [text.strip().splitlines()[0] for text in get_text_parts(parts) if text.strip()]
    for data in get_data_parts(parts):
        if isinstance(data, dict) and "sources" in data:
            data = {"sources": [source.get("url") for source in data["sources"]]}
        shown.append(json.dumps(data, sort_keys=True))
    return " ".join(shown)


def show(event) -> None:
    """One line per event: the task, a status, an artifact."""
    if event.HasField("task"):
        task = event.task
        print(f"task {task.id} (context {task.context_id}): {state_name(task.status.state)}")
    elif event.HasField("status_update"):
        status = event.status_update.status
        said = show_parts(status.message.parts) if status.HasField("message") else ""
        print(f"status: {state_name(status.state)}" + (f": {said}" if said else ""))
    elif event.HasField("artifact_update"):
        artifact = event.artifact_update.artifact
        print(f"artifact {artifact.name}: {show_parts(artifact.parts)}")
    elif event.HasField("message"):
        print(f"message: {show_parts(event.message.parts)}")


async def main(command: str, *args: str) -> None:
    # [start:ask]
    token = os.getenv("A2A_TOKEN")
    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=120
    )
    binding = os.getenv("A2A_BINDING", "JSONRPC")
    config = ClientConfig(httpx_client=http, supported_protocol_bindings=[binding])
    try:
        client = await create_client(URL, client_config=config)  # reads the card first
    except A2AClientError as exc:
        sys.exit(f"error: {exc}")
    try:
        if command == "ask":
            message = new_text_message(args[0], role=Role.ROLE_USER)
        # [end:ask]
        # [start:decide]
        elif command == "decide":  # the next message in the task: a decision on its call
            task_id, call_id, decision = args[:3]
            if len(args) > 3:  # the task's context, as given: the message goes without a lookup
                context_id = args[3]
            else:  # the task's context, asked of the agent (GetTask) as this caller
                context_id = (await client.get_task(GetTaskRequest(id=task_id))).context_id
            data = {"call_id": call_id, "decision": decision}
            message = new_data_message(data, task_id=task_id, context_id=context_id)
            message.role = Role.ROLE_USER
        # [end:decide]
        elif command == "get":
            print((await client.get_task(GetTaskRequest(id=args[0]))).status)
            return
        elif command == "list":
            for task in (await client.list_tasks(ListTasksRequest())).tasks:
                state = state_name(task.status.state)  # the context: decide's 4th argument
                print(f"task {task.id} (context {task.context_id}): {state}")
            return
        # [start:send]
        if command == "subscribe":
            events = client.subscribe(SubscribeToTaskRequest(id=args[0]))
        else:
            events = client.send_message(SendMessageRequest(message=message))
        async for event in events:  # Server-Sent Events, one per change of the task
            show(event)
        # [end:send]
    except A2AError as exc:  # the agent's answer in A2A's terms: an error code and a message
        sys.exit(f"error: {type(exc).__name__}: {exc}")
    finally:
        await client.close()
        await http.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
