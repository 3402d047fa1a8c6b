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

from .runner import DOCKER_ERRORS, LABEL, SandboxRunner, SandboxUnavailable, remove

logger = logging.getLogger(__name__)


class Sweeper:
    """Removes expired sandbox containers on `runner`'s engine, whoever started them."""

    def __init__(self, runner: SandboxRunner):
        self.runner, self.config = runner, runner.config
        self._timer: asyncio.Task | None = None

    def sweep(self) -> int:
        """Remove sandbox containers that are past their deadline, whichever service started them
        (it may have died), and with egress the runs' networks no container is left on: return
        how many."""
        now, removed = time.time(), 0
        try:
            leftovers = self.runner.client.containers.list(
                all=True, sparse=True, filters={"label": f"{LABEL}.owner"}
            )
        except DOCKER_ERRORS as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        for container in leftovers:
            expires = (container.attrs.get("Labels") or {}).get(f"{LABEL}.expires", "")
            if not expires.isdigit() or int(expires) < now:
                remove(container)
                removed += 1
        if self.runner.network is not None:  # egress: runs' networks their containers outlived
            removed += self.runner.network.sweep(self.runner.client)
        return removed

    def start(self) -> None:
        """From the event loop: sweep() every sweep_interval_seconds while the loop runs (once is
        enough; QueuedRunner starts it with its first run too)."""
        loop = asyncio.get_running_loop()
        if self._timer is None or self._timer.done() or self._timer.get_loop() is not loop:
            self._timer = loop.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_interval_seconds)
            try:
                if removed := await asyncio.to_thread(self.sweep):
                    logger.info("removed %d expired sandbox container(s)", removed)
            except SandboxUnavailable as exc:
                logger.warning("sandbox sweep failed: %s", exc)

    def close(self) -> None:
        """Stop the timer (the runner stays open)."""
        if self._timer is not None:  # may be called from another thread than the loop's
            with contextlib.suppress(RuntimeError):  # that loop is closed: the task is gone
                self._timer.get_loop().call_soon_threadsafe(self._timer.cancel)
