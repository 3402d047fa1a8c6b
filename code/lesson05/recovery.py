"""After a restart (docs/05, "Every failure and where it is tested"): the API holds nothing in
memory, so a new one adopts the runs going from Redis on its first reaper pass, the start-up sweep.
A worker that finished while no API was running has been removed by the engine (auto_remove), its
exit code with it: what it wrote in its own stream says whether it answered."""

import logging

from .redis_access import Relay

logger = logging.getLogger("variations")


class NoAdoption:
    """The lesson's default `recovery`: a variation whose container vanished has failed."""

    async def adopted(self, run_id: str, index: int) -> bool:
        return False


class Adoption:
    """The lesson's Orchestrator's `recovery`, asked by a reaper pass about a running variation
    whose container vanished: its last events are copied first; if it had answered, it succeeded
    (exit code unknown), else the reaper fails it, as in the lesson."""

    def __init__(self, runs):
        self.runs, self.relay = runs, Relay(runs)  # the reaper's Redis connections

    async def adopted(self, run_id: str, index: int) -> bool:
        await self.relay.drain(run_id, index)
        if "result" not in await self.runs.variation(run_id, index):
            return False
        reason = "answered; its container ended while no API was running, its exit code unread"
        await self.runs.finish(run_id, index, "succeeded", exit_code=None, reason=reason)
        return True
