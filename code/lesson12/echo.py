"""The smallest A2A agent: it completes each task with what it was sent. `make bench-a2a` serves it
in lesson 12's composition (A2A_AGENT=lesson12.echo:EchoExecutor) to measure the protocol alone."""

from a2a.helpers import get_message_text, new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.tasks import TaskUpdater


class EchoExecutor(AgentExecutor):
    async def execute(self, request: RequestContext, event_queue: EventQueue) -> None:
        task = request.current_task or new_task_from_user_message(request.message)
        if request.current_task is None:
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        text = get_message_text(request.message)
        await updater.complete(updater.new_agent_message([new_text_part(text)]))

    async def cancel(self, request: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, request.task_id, request.context_id).cancel()
