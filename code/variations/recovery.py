"""After a restart (docs/05, "Every failure and where it is tested"): the API holds nothing in
memory, so a new one adopts the runs going from Redis on its first reaper pass, the start-up sweep.
A worker that finished while no API was running has been removed by the engine (auto_remove), its
exit code with it: what it wrote in its own stream says whether it answered."""

import logging

logger = logging.getLogger("variations")


class Adoption:
    """Mixed into the Orchestrator: a variation whose container vanished gets its last events
    copied first; if it had answered, it succeeded (exit code unknown), else it failed."""

    async def vanished(self, run_id: str, index: int) -> None:
        await self.relay.drain(run_id, index)
        if "result" not in await self.reaper_runs.variation(run_id, index):
            return await super().vanished(run_id, index)
        reason = "answered; its container ended while no API was running, its exit code unread"
        await self.reaper_runs.finish(run_id, index, "succeeded", exit_code=None, reason=reason)
