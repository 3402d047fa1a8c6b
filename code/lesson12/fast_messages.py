"""Lesson 12: SendMessage without the SDK's per-task machinery, when none of it is needed.

The SDK's handler answers every message through an ActiveTask: a producer task that runs the
executor, a consumer task that applies its events to the task and stores them, queues between
them and between the consumer and the request, and locks, about half of the server's time per
message to the echo agent (`make bench-a2a`, BENCH_PROFILE=1). That machinery is there for what
this path does not do: several requests sharing one running task, streams tapping it, a request
that returns before the executor has answered.

FastHandler takes a SendMessage that needs none of it (not streamed, not `return_immediately`, no
push configuration, and a task no ActiveTask on this replica holds) and runs the same executor
with a queue that applies each event as it is enqueued, with the SDK's own EventConsumer and
TaskManager: the same validation, the same rows in the same store, the same answer. Each event
is written when the executor enqueues it, before it goes on, with one exception: a new task's
`Task` waits for the executor's next event while the executor awaits nothing else, and the two
go as one statement (OneStatementTaskStore.hold); it is sent alone as soon as the executor
awaits anything, and always before the answer. Everything else goes the SDK's way.

A task started here is not held in memory: a follow-up, SubscribeToTask or CancelTask on any
replica finds it in the store, as a task another replica runs.
`tests/lesson_12/test_fast_messages.py` sends the same requests to a server with and one without
it and compares the answers whole.
"""

import asyncio
import logging

from a2a.server.agent_execution.active_task import (
    INTERRUPTED_TASK_STATES,
    TERMINAL_TASK_STATES,
    EventConsumer,
)
from a2a.server.cluster.task_store import ConcurrentTaskModificationError
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.request_handlers.request_handler import validate_request_params
from a2a.server.tasks.task_manager import TaskManager
from a2a.types import Message, Task, TaskState, TaskStatusUpdateEvent
from a2a.utils.errors import (
    InternalError,
    InvalidParamsError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.input_mode_validator import validate_input_modes
from a2a.utils.task import apply_history_length, validate_history_length

logger = logging.getLogger("lesson12.fast_messages")
ANSWERS = TERMINAL_TASK_STATES | INTERRUPTED_TASK_STATES  # where SendMessage stops waiting
_full_send = DefaultRequestHandlerV2.on_message_send.__wrapped__  # its checks already made


def check_context(context_id: str | None, task: Task) -> None:
    """A message naming another context than its task's is refused, in the SDK's words, before
    anything of it is recorded (the SDK itself says so only after it has stored the message)."""
    if context_id and context_id != task.context_id:
        raise InvalidParamsError(
            message=f"Context {context_id} does not match context "
            f"{task.context_id} of task {task.id}"
        )


class _Nothing:
    """The queues and locks of an ActiveTask that the consumer touches and this path has not."""

    def task_done(self) -> None: ...

    def shutdown(self, immediate: bool = False) -> None: ...

    def release(self) -> None: ...

    async def close(self, immediate: bool = False) -> None: ...


class Lane(EventQueue):
    """One message's executor and its events: the executor's queue, and what the SDK's
    EventConsumer takes for its ActiveTask. Each event is applied and stored when enqueued."""

    def __init__(self, task_id: str, manager: TaskManager, stream, push_sender, created: bool):
        self._task_id, self._task_manager = task_id, manager
        self._event_stream, self._push_sender = stream, push_sender
        self._task_created, self._is_finished = asyncio.Event(), asyncio.Event()
        if created:
            self._task_created.set()
        self._event_queue_agent = self._request_queue = self._request_lock = _Nothing()
        self._event_queue_subscribers = _Subscribers(self)  # what it hands on: see `_offer`
        self._producer_task: asyncio.Task | None = None
        self.consumer = EventConsumer(self)  # type: ignore[arg-type]: it reads what is above
        self.order = asyncio.Lock()  # events one at a time, as the consumer's queue has them
        self.closed = False  # the consumer failed: later events are dropped, as by its queue
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()
        self.result: Task | Message | None = None
        # A new task's first write may wait for its next (OneStatementTaskStore.hold): both go
        # as one statement. It waits only while the executor does: a write still held when the
        # executor awaits anything else, or when the answer is ready, is sent first.
        store = manager._versioned_store
        self.store = store if hasattr(store, "hold") else None
        self.answer_held = False  # the answer is ready, and waits for the held write
        self.flushes: set[asyncio.Task] = set()

    @property
    def task_id(self) -> str:
        return self._task_id

    def schedule_idle_release(self) -> None: ...

    async def close(self, immediate: bool = False) -> None: ...

    async def enqueue_event(self, event) -> None:
        """The executor's events: applied, stored and answered before it goes on."""
        async with self.order:
            if self.closed:
                logger.warning("Queue was closed during enqueuing. Event dropped.")
                return
            if self.store and isinstance(event, Task) and not self._task_created.is_set():
                self.store.hold(self._task_id)
            try:
                await self.consumer._process_event(event)
            except Exception as exc:  # the consumer's own failure (InvalidAgentResponseError...)
                await self._failed(exc)
            if self._held():
                if self.answer_held:
                    await self._flush()
                else:  # runs once the executor awaits anything: this event written by then
                    asyncio.get_running_loop().call_soon(self._flush_soon)

    def _held(self) -> bool:
        return self.store is not None and self._task_id in self.store.held

    async def _flush(self) -> None:
        """The held write, sent alone; then the answer that waited for it."""
        try:
            await self.store.flush(self._task_id)
        except Exception as exc:
            await self._failed(exc)
        if self.answer_held:
            self.answer_held = False
            self._settle()

    def _flush_soon(self) -> None:
        if self._held():
            flush = asyncio.create_task(self._flush_in_order())
            self.flushes.add(flush)
            flush.add_done_callback(self.flushes.discard)

    async def _flush_in_order(self) -> None:
        async with self.order:
            if self._held():
                await self._flush()

    async def _failed(self, exc: BaseException) -> None:
        """What EventConsumer.run does when it fails: FAILED written, the request told."""
        self.closed = True
        logger.error("Consumer[%s]: Failed", self._task_id, exc_info=exc)
        error = exc
        if isinstance(exc, ConcurrentTaskModificationError):
            error = InternalError(message=str(exc))
        try:
            await self.consumer._write_failed_status()
        except Exception:  # the consumer's task would end here; the executor is not told
            logger.exception("Consumer[%s]: FAILED not written", self._task_id)
        finally:
            self._settle(error=error)

    async def run(self, executor, request_context) -> None:
        """The producer's part: the executor, then its failure (if any) as the consumer takes
        it; the answer is settled once it has returned, whatever came before."""
        self.consumer.message_to_save = request_context.message  # as at _RequestStarted
        try:
            await executor.execute(request_context, self)
        except asyncio.CancelledError:  # by the consumer, when another writer ended the task
            pass
        except Exception as exc:
            logger.exception("Producer[%s]: Execution failed", self._task_id)
            async with self.order:
                if not self.closed:
                    self.consumer.producer_failed = True
                    await self._failed(exc)
        if self.store is not None:
            async with self.order:
                await self._flush()  # a write still held (and no more to come), sent alone
        self._settle()

    # The consumer hands each applied event (with the task as it is now) to its subscribers'
    # queue, this lane: the request's answer, as DefaultRequestHandlerV2.on_message_send picks it.
    async def _offer(self, event, updated_task) -> None:
        if isinstance(event, BaseException):
            return self._settle(error=event)
        if isinstance(event, TaskStatusUpdateEvent):
            event = updated_task
        if isinstance(event, Task) and event.status.state in ANSWERS:
            if event.id != self._task_id:
                logger.error(
                    "Agent generated task_id=%s does not match %s", event.id, self._task_id
                )
                return self._settle(
                    error=InternalError(message="Task ID mismatch in agent response")
                )
            self.result = event
            if event.status.state != TaskState.TASK_STATE_FAILED:
                self._settle()
        elif isinstance(event, Message):
            self.result = event

    def _settle(self, error: BaseException | None = None) -> None:
        if error is None and self._held():  # nobody learns of a task not written
            self.answer_held = True
            return
        if not self.answer.done():
            if error is not None:
                self.answer.set_exception(error)
            else:
                self.answer.set_result(None)


class _Subscribers:
    """The consumer's `_event_queue_subscribers`: enqueue_event((event, task)) and close()."""

    def __init__(self, lane: Lane):
        self.lane = lane

    async def enqueue_event(self, item) -> None:
        await self.lane._offer(*item)

    async def close(self, immediate: bool = False) -> None: ...


class FastHandler(DefaultRequestHandlerV2):
    """The SDK's handler, with SendMessage answered on a Lane when it can be (above)."""

    def __init__(self, *args, fast: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = fast
        self.going: dict[str, asyncio.Task] = {}  # task id: its executor, on a lane here

    def _suits(self, params) -> bool:
        configuration = params.configuration
        return (
            self.fast
            and not configuration.return_immediately
            and not (
                self._push_config_store and configuration.HasField("task_push_notification_config")
            )
        )

    @validate_request_params
    async def on_message_send(self, params, context):
        if not self._suits(params):
            return await _full_send(self, params, context)
        # DefaultRequestHandlerV2._setup_active_task's checks, in its order, and the store read
        # ActiveTask.start makes (once here: the producer's second read finds the same row).
        validate_history_length(params.configuration)
        if self._validate_input_modes:
            validate_input_modes(params.message, self._agent_card)
        task_id = params.message.task_id or None
        context_id = params.message.context_id or None
        stored = None
        if task_id:
            if await self._active_task_registry.get(task_id) is not None:
                return await _full_send(self, params, context)  # held here: its requests queue
            while (going := self.going.get(task_id)) is not None:  # one message at a time
                await asyncio.wait({going})
            stored = await self._versioned_store.get(task_id, context)
            if stored is None:
                raise TaskNotFoundError(f"Task {task_id} not found")
            check_context(context_id, stored.task)
        request_context = await self._request_context_builder.build(
            params=params, task_id=task_id, context_id=context_id, task=None, context=context
        )
        task_id, context_id = request_context.task_id, request_context.context_id
        manager = TaskManager(
            task_store=self._versioned_store,
            context=context,
            task_id=task_id,
            context_id=context_id,
            initial_message=request_context.message,
        )
        if stored is not None:
            manager._current_task, manager._current_version = stored.task, stored.version
            state = stored.task.status.state
            if state in TERMINAL_TASK_STATES:
                raise UnsupportedOperationError(
                    message=f"Task {task_id} is in terminal state: {TaskState.Name(state)}"
                )
        request_context.current_task = await manager.get_task()
        logger.debug("task %s: this message on the fast path", task_id)
        lane = Lane(task_id, manager, self._event_stream, self._push_sender, stored is not None)
        runner = asyncio.create_task(lane.run(self.agent_executor, request_context))
        lane._producer_task = runner
        self.going[task_id] = runner
        runner.add_done_callback(lambda _: self.going.pop(task_id, None))
        await lane.answer
        result = lane.result
        if result is None:  # the executor returned with no answer: the task as stored
            if not lane._task_created.is_set():
                raise InternalError(message="the agent ended without a task or a message")
            result = await manager.get_task()
        if isinstance(result, Task):
            result = apply_history_length(result, params.configuration)
        return result

    async def aclose(self) -> None:
        going = list(self.going.values())
        for runner in going:
            runner.cancel()
        await asyncio.gather(*going, return_exceptions=True)
        await super().aclose()
