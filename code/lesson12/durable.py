"""A2A tasks that survive kill -9 of every replica: the SDK's executor and handler, with a lease.

DurableExecutor  the agent for one task, from its last checkpoint: a new question, the caller's
                 decision on the call it waits for, or the step a killed replica never finished.
                 Every event goes through the SDK (TaskUpdater), into its task store and event
                 log in PostgreSQL, where SubscribeToTask on any replica reads it.
DurableHandler   the SDK's request handler (SendMessage on fast_messages.py's path when it can
                 be), which first checks a message: its size, that a task it names waits for
                 input and that it decides the call waited on (taken once: work.py); which
                 bounds the streams a caller holds open; and which removes a cancelled task's
                 sandboxes, on whichever replica they run.
Recovery         each replica's loop: claims tasks whose replica stopped renewing its lease and
                 runs them on through the SDK's own ActiveTask, as if a request had come.
Sealed           what the routes are given instead of the handler: ids checked before anything is
                 stored, and no exception's text sent to a caller.
"""

import asyncio
import contextlib
import functools
import inspect
import logging
import re

import psycopg
from a2a.helpers import (
    get_data_parts,
    get_message_text,
    new_data_part,
    new_task_from_user_message,
    new_text_part,
)
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.agent_execution.active_task_registry import ActiveTaskRegistry
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater
from a2a.types import Message, Task, TaskState
from a2a.utils.errors import (
    A2AError,
    InternalError,
    InvalidParamsError,
    InvalidRequestError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.types import Command
from psycopg_pool import PoolTimeout
from pydantic import ValidationError

from research_agent import BadEdit, DecisionIn, HeldSlots, resume_value

from .agent import answer_parts
from .callers import Caller
from .fast_messages import FastHandler, check_context
from .work import WorkStore

logger = logging.getLogger("lesson12.durable")
TERMINAL = {
    TaskState.TASK_STATE_COMPLETED,
    TaskState.TASK_STATE_CANCELED,
    TaskState.TASK_STATE_FAILED,
    TaskState.TASK_STATE_REJECTED,
}
DATABASE_ERRORS = (psycopg.OperationalError, PoolTimeout, OSError)
SLOT = "a2a_work_slot"  # the work row reserved for a new task (DurableHandler._admit)


def pending_call(task: Task) -> dict | None:
    """The call a task in input-required waits on, from its status message's data."""
    if task.status.state != TaskState.TASK_STATE_INPUT_REQUIRED:
        return None
    found = [d for d in get_data_parts(task.status.message.parts) if isinstance(d, dict)]
    return next((d for d in found if "call_id" in d), None)


def question_of(message) -> str:
    """What the model reads of a caller's message: its text parts, and nothing else. Metadata
    and data parts are the caller's, never instructions for our model."""
    return get_message_text(message).strip()


class DurableExecutor(AgentExecutor):
    def __init__(self, agent, work: WorkStore):
        self.agent, self.work = agent, work

    async def execute(self, request: RequestContext, event_queue: EventQueue) -> None:
        task = request.current_task
        if task is None:  # a new task, leased to this replica from its first row
            task = new_task_from_user_message(request.message)
            owner = request.call_context.user.user_name
            slot = request.call_context.state.get(SLOT, "")
            if not await self.work.start(task.id, owner, task.context_id, slot):
                raise InvalidParamsError(message="a task with that id exists")
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        beat = asyncio.create_task(self._heartbeat(task.id, asyncio.current_task()))
        try:
            await self._go_on(task, updater, request.message)
        except Exception:
            if not await self.work.ended(task.id):
                # The SDK ends the task failed: nobody goes on with it (no lease left to lapse).
                await self.work.finish(task.id)
                raise
            # Cancelled on another replica as run_python was about to start its sandbox, which
            # it removed instead: let go, as when the lease is lost (nothing more is written).
            logger.info("task %s let go: it was cancelled", task.id)
            raise asyncio.CancelledError from None
        finally:
            beat.cancel()

    async def _heartbeat(self, task_id: str, work: asyncio.Task) -> None:
        while True:
            await asyncio.sleep(self.work.lease.total_seconds() / 3)
            with contextlib.suppress(*DATABASE_ERRORS):
                if not await self.work.heartbeat(task_id):
                    logger.warning("task %s: lease lost, another replica goes on", task_id)
                    work.cancel()  # stop before writing anything more
                    return

    async def _go_on(self, task: Task, updater: TaskUpdater, message) -> None:
        config = {"configurable": {"thread_id": task.id}}
        saved = await self.agent.aget_state(config)
        if not saved.values:  # the question: the text of the first message, nothing else of it
            first = message if message is not None else task.history[0]
            inputs = {"messages": [HumanMessage(question_of(first))]}
        elif saved.interrupts:  # it waits for a person: decided (and leased) by the handler?
            pause = saved.interrupts[0]
            decided = await self.work.decision(task.id)
            if not decided or decided["call_id"] != pause.value["tool_call_id"]:
                return await self._ask(updater, task.id, pause.value)
            if decided["decision"] == "reject":  # the task ends rejected; nothing runs
                said = decided.get("message") or "the caller rejected the call"
                await updater.reject(updater.new_agent_message([new_text_part(said)]))
                return await self.work.finish(task.id)
            inputs = Command(resume={pause.id: decided["resume"]})
        else:  # cut by a crash mid-step: LangGraph runs that step again (lesson 10)
            inputs = None
        if task.status.state != TaskState.TASK_STATE_WORKING:
            await updater.start_work()
        if inputs is not None or saved.next:
            async for update in self.agent.astream(
                inputs, config, stream_mode="updates", durability="sync"
            ):
                await self._progress(updater, update)
            saved = await self.agent.aget_state(config)
            if saved.interrupts:
                return await self._ask(updater, task.id, saved.interrupts[0].value)
        await updater.add_artifact(answer_parts(saved.values["messages"]), name="answer")
        await updater.complete()
        await self.work.finish(task.id)

    async def _progress(self, updater: TaskUpdater, update: dict) -> None:
        """A working status per tool call and per result: what a streaming client follows."""
        for node in update.values():
            for m in (node or {}).get("messages", []) if isinstance(node, dict) else []:
                if isinstance(m, AIMessage) and m.tool_calls:
                    text = "calling " + ", ".join(call["name"] for call in m.tool_calls)
                elif isinstance(m, ToolMessage):
                    text = f"{m.name} answered"
                else:
                    continue
                message = updater.new_agent_message([new_text_part(text)])
                await updater.update_status(TaskState.TASK_STATE_WORKING, message=message)

    async def _ask(self, updater: TaskUpdater, task_id: str, call: dict) -> None:
        """input-required, with the call as data. The call waited on is written first, so a
        decision that comes as soon as the caller reads the question finds it."""
        pending = {"call_id": call["tool_call_id"], "tool": call["name"], "args": call["args"]}
        await self.work.wait_for(task_id, pending["call_id"])
        parts = [new_text_part(f"approve this {pending['tool']} call?"), new_data_part(pending)]
        await updater.requires_input(updater.new_agent_message(parts))

    async def cancel(self, request: RequestContext, event_queue: EventQueue) -> None:
        """The SDK writes CANCELED; the task's work row goes (DurableHandler removes its sandboxes
        after that)."""
        await self.work.finish(request.task_id)


class DurableHandler(FastHandler):
    def __init__(self, *args, work: WorkStore, tool: BaseTool, sandbox, limits: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.work, self.tool, self.sandbox, self.limits = work, tool, sandbox, limits
        self.streams = HeldSlots()  # open streams per caller, on this replica

    async def on_message_send(self, params, context: ServerCallContext):
        await self._admit(params.message, context)
        async with self._slot_of(context):
            return await super().on_message_send(params, context)

    async def on_message_send_stream(self, params, context: ServerCallContext):
        await self._admit(params.message, context)
        async with self._slot_of(context):
            with self._stream_of(context):
                async for event in super().on_message_send_stream(params, context):
                    yield event

    async def on_subscribe_to_task(self, params, context: ServerCallContext):
        with self._stream_of(context):
            async for event in super().on_subscribe_to_task(params, context):
                yield event

    async def on_cancel_task(self, params, context: ServerCallContext):
        """CANCELED (the SDK writes it, whichever replica runs the task), then the work row goes,
        then the task's sandboxes: run_python asks for the row before it starts one, so a
        sandbox made after this look is removed unstarted (work.py, TaskResults)."""
        task = await super().on_cancel_task(params, context)
        await self.work.finish(params.id)
        await self.sandbox.stop_cancelled(params.id)
        return task

    @contextlib.asynccontextmanager
    async def _slot_of(self, context: ServerCallContext):
        """A new task's reserved row goes if the SDK fails before the executor takes it."""
        try:
            yield
        except BaseException:
            if slot := context.state.get(SLOT):
                await asyncio.shield(self.work.finish(slot))
            raise

    @contextlib.contextmanager
    def _stream_of(self, context: ServerCallContext):
        caller = context.user.user_name
        most = self.limits["streams_per_caller"]
        if self.streams.full(caller, most):
            raise InvalidRequestError(message=f"at most {most} open streams per caller")
        release = self.streams.take(caller)
        try:
            yield
        finally:
            release()

    async def _admit(self, message, context: ServerCallContext) -> None:
        """Bounds on the message; and for a task it names, a decision on the call it waits on."""
        if len(message.parts) > self.limits["parts"]:
            raise InvalidParamsError(message=f"at most {self.limits['parts']} parts")
        for part in message.parts:
            size = len(part.text) if part.HasField("text") else len(part.SerializeToString())
            if size > self.limits["part_chars"]:
                raise InvalidParamsError(message=f"a part over {self.limits['part_chars']} bytes")
        owner = context.user.user_name
        if not message.task_id:  # a row for it now, counted with the caller's others at once
            most = self.limits["active_tasks"]
            if not (slot := await self.work.reserve(owner, most)):
                raise InvalidRequestError(message=f"at most {most} tasks going per caller")
            context.state[SLOT] = slot
            return
        stored = await self.task_store.get(message.task_id, context)  # the owner's only
        if stored is None:
            raise TaskNotFoundError(message=f"no task {message.task_id}")
        task = stored.task
        check_context(message.context_id, task)
        message.context_id = task.context_id
        if task.status.state in TERMINAL:  # as the SDK says it, before it loads the task
            state = TaskState.Name(task.status.state)
            raise UnsupportedOperationError(message=f"Task {task.id} is in terminal state: {state}")
        pending = pending_call(task)
        if pending is None:
            raise UnsupportedOperationError(message="the task is working, not waiting for input")
        try:
            data = next(d for d in get_data_parts(message.parts) if isinstance(d, dict))
            decision = DecisionIn.model_validate(data)
            resume = resume_value(decision, pending["tool"], self.tool)  # an edit, checked
        except (StopIteration, ValidationError, BadEdit) as exc:
            text = f"send a decision on call {pending['call_id']}: {exc}"
            raise InvalidParamsError(message=text[:500]) from None
        if decision.call_id != pending["call_id"]:
            raise InvalidParamsError(message=f"the call waiting is {pending['call_id']}")
        record = {**decision.model_dump(), "resume": resume}
        if not await self.work.decide(task.id, owner, decision.call_id, record):
            raise InvalidParamsError(message="that call has been decided already")


# The SDK's tables hold a task's and a context's id in VARCHAR(36); a message's id is kept in JSON.
ID = re.compile(r"[A-Za-z0-9._:-]+")
ID_LIMITS = {"task_id": 36, "context_id": 36, "message_id": 128, "id": 36}


def check_ids(found) -> None:
    """An id the store cannot hold, before anything is stored or looked up: a task named by it
    cannot exist (TaskNotFoundError, as for any unknown task); a new context's or message's id
    is refused (InvalidParamsError)."""
    for name, most in ID_LIMITS.items():
        value = getattr(found, name, "")
        if isinstance(value, str) and value and (len(value) > most or not ID.fullmatch(value)):
            if name in ("task_id", "id"):  # a task to find: no such task
                raise TaskNotFoundError(message="no such task")
            raise InvalidParamsError(message=f"{name}: at most {most} of A-Z a-z 0-9 . _ : -")


class Sealed:
    """The request handler as the routes see it. Its requests' ids are checked first; an exception
    that is not an A2A error is logged here and answered as a bare InternalError: the SDK's
    JSON-RPC route would send its text (a SQL statement and its parameters) to the caller."""

    def __init__(self, handler):
        self.handler = handler

    def __getattr__(self, name: str):
        found = getattr(self.handler, name)
        if name.startswith("on_") and inspect.isasyncgenfunction(inspect.unwrap(found)):
            return functools.partial(self._stream, found)
        if name.startswith("on_") and inspect.iscoroutinefunction(inspect.unwrap(found)):
            return functools.partial(self._call, found)
        return found

    @staticmethod
    def _check(params) -> None:
        check_ids(params)
        if isinstance(getattr(params, "message", None), Message):
            check_ids(params.message)

    async def _context_of_its_task(self, params, args, kwargs) -> None:
        """A message that names its task and no context is in that task's context (A2A 1.0,
        section 3.4): the SDK's handler would make up a new one, and the task's events would not
        match it."""
        message = getattr(params, "message", None)
        if isinstance(message, Message) and message.task_id and not message.context_id:
            context = args[0] if args else kwargs["context"]
            stored = await self.handler.task_store.get(message.task_id, context)  # owner's only
            if stored is not None:
                message.context_id = stored.task.context_id

    async def _call(self, method, params, *args, **kwargs):
        self._check(params)
        try:
            await self._context_of_its_task(params, args, kwargs)
            return await method(params, *args, **kwargs)
        except A2AError:
            raise
        except Exception:
            logger.exception("%s failed", method.__name__)
            raise InternalError(message="internal error") from None

    async def _stream(self, method, params, *args, **kwargs):
        self._check(params)
        try:
            await self._context_of_its_task(params, args, kwargs)
            async for event in method(params, *args, **kwargs):
                yield event
        except A2AError:
            raise
        except Exception:
            logger.exception("%s failed", method.__name__)
            raise InternalError(message="internal error") from None


class Recovery:
    """Claims the tasks of replicas that stopped renewing their lease, and runs them on."""

    def __init__(self, work: WorkStore, executor, store, stream, poll_seconds: float = 1.0):
        self.work, self.poll = work, poll_seconds
        self.registry = ActiveTaskRegistry(executor, store, event_stream=stream)
        self.running: set[asyncio.Task] = set()

    async def run(self) -> None:
        while True:
            try:
                for row in await self.work.claim_orphans(max(0, 4 - len(self.running))):
                    logger.info("task %s: its replica is gone; going on here", row["task_id"])
                    task = asyncio.create_task(self._resume(row))
                    self.running.add(task)
                    task.add_done_callback(self.running.discard)
            except DATABASE_ERRORS as exc:
                logger.warning("cannot claim orphaned tasks: %s", str(exc).splitlines()[0])
            await asyncio.sleep(self.poll)

    async def _resume(self, row: dict) -> None:
        context = ServerCallContext(user=Caller(row["owner"]))
        task_id, context_id = row["task_id"], row["context_id"]
        try:
            active = await self.registry.get_or_create(
                task_id, call_context=context, context_id=context_id
            )
        except A2AError:  # cancelled or ended meanwhile: nothing to go on with
            return await self.work.finish(task_id)
        request = RequestContext(call_context=context, task_id=task_id, context_id=context_id)
        try:
            async for _ in active.subscribe(request=request):
                pass  # the events are stored as they come; subscribers read them there
        except Exception:
            logger.exception("task %s: resuming failed", task_id)
        finally:
            await active.aclose()

    async def stop(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)
        await self.registry.aclose()
