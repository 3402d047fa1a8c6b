"""Leftovers: every sandbox container carries its owner and an expiry time as labels, and a
running service removes those past their expiry, at start-up and then on a timer.

Lesson 04, Going further ("Leftovers: labels and a sweep"). With auto_remove the engine removes a
container as it exits; the sweep is left with the rare cases: a container created but never
started (its API died in between), or one the engine failed to remove.
"""

import asyncio
import contextlib
import logging
import time

from .sandbox import DOCKER_ERRORS, LABEL, RunResult, SandboxUnavailable, remove
from .sandbox_admission import QueuedRunner
from .sandbox_config import SandboxConfig

logger = logging.getLogger(__name__)


class SweepingRunner(QueuedRunner):
    """A runner that also removes expired sandbox containers, whoever started them."""

    def __init__(self, config: SandboxConfig | None = None, client=None):
        super().__init__(config, client)
        self._sweeper: asyncio.Task | None = None

    def sweep(self) -> int:
        """Remove sandbox containers that are past their deadline, whichever service started them
        (it may have died): return how many."""
        now, removed = time.time(), 0
        try:
            leftovers = self.client.containers.list(
                all=True, sparse=True, filters={"label": f"{LABEL}.owner"}
            )
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        for container in leftovers:
            expires = (container.attrs.get("Labels") or {}).get(f"{LABEL}.expires", "")
            if not expires.isdigit() or int(expires) < now:
                remove(container)
                removed += 1
        return removed

    def start_sweeping(self) -> None:
        """From the event loop: sweep() every sweep_interval_seconds while the loop runs (once is
        enough; a run starts it too)."""
        loop = asyncio.get_running_loop()
        if self._sweeper is None or self._sweeper.done() or self._sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_seconds)
            try:
                if removed := await asyncio.to_thread(self.sweep):
                    logger.info("removed %d expired sandbox container(s)", removed)
            except SandboxUnavailable as exc:
                logger.warning("sandbox sweep failed: %s", exc)

    async def arun(self, *args, **kwargs) -> RunResult:
        """`arun`, and the timer starts with the first run if nothing started it before."""
        if not self._closing:  # a refused run starts nothing
            self.start_sweeping()
        return await super().arun(*args, **kwargs)

    def close(self) -> None:
        """Stop the timer, then close the runner."""
        if self._sweeper is not None:  # may be called from another thread than the loop's
            with contextlib.suppress(RuntimeError):  # that loop is closed: the task is gone
                self._sweeper.get_loop().call_soon_threadsafe(self._sweeper.cancel)
        super().close()
