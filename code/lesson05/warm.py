"""Warm workers (docs/05, "Warm workers"): containers started ahead, imports done, each waiting
for exactly one variation. The lesson's Orchestrator holds a WarmPool as its `pool` and calls it at
named points: a variation takes an idle worker if one waits (take, hand_over), else starts a cold
container as always; each reaper pass names the warm workers' jobs (with_jobs) and tends the pool
(removes the ones that left or grew old, tops it up)."""

import asyncio
import dataclasses
import logging
import time
import uuid

from research_agent import job as contract
from research_agent import warm_queue_key

from .docker_workers import Worker
from .redis_access import WorkerUsers

logger = logging.getLogger("variations")


class NoPool:
    """The lesson's default `pool`: no worker started ahead, so every variation starts cold, and
    a reaper pass has nothing to tend."""

    def take(self, run_id: str, index: int) -> None:
        return None

    async def hand_over(self, job, agent: dict) -> None:
        pass  # never called: take() gave no warm worker

    async def mark_alive(self) -> None:
        pass

    async def with_jobs(self, workers: list[Worker]) -> list[Worker]:
        return workers  # their labels name their run and variation

    def wanted_users(self) -> set[str]:
        return set()

    async def tend(self, listed: list[Worker], listed_at: float) -> None:
        pass

    async def close(self) -> None:
        pass


class WarmPool:
    """WARM_WORKERS containers that wait (BLPOP on a list of their own) for one job. A variation
    takes an idle one if there is one, else starts a cold container as always; a taken worker runs
    its variation under the same labels' deployment, deadline and reaper, then exits: never reused.
    The reaper's pass tends the pool: it removes the ones that left or grew old, and tops it up."""

    def __init__(self, settings, workers, users: WorkerUsers, shared: dict, runs, reaper_runs):
        self.settings, self.workers, self.users = settings, workers, users
        self.shared = shared  # what every worker gets from the API (worker_settings in the lesson)
        self.runs, self.reaper_runs = runs, reaper_runs  # the routes' Redis, and the reaper's
        self.starting: set[str] = set()  # names
        self.idle: dict[str, tuple[str, float]] = {}  # name -> (container id, started at)
        self.taken: dict[str, tuple[str, int, float]] = {}  # name -> (run id, variation, when)
        self.tasks: set[asyncio.Task] = set()
        self.retry_at = 0.0  # after a failed start, the next try waits (no image: no busy loop)
        self.closed = False

    async def environment(self, name: str) -> dict[str, str]:
        s = self.settings
        queue, alive = warm_queue_key(s.DEPLOYMENT, name), contract.warm_alive_key(s.DEPLOYMENT)
        return {
            # Its own user: its list and nothing else; the job it pops brings its variation's.
            "REDIS_URL": await self.users.warm(name, queue, contract.warm_ready_key(queue), alive),
            "WARM_QUEUE": queue,
            "WARM_ALIVE": alive,
            "WARM_IDLE_SECONDS": str(s.WARM_MAX_AGE_SECONDS + 60),
            # The secrets here, never in its job: nothing secret travels through Redis.
            **contract.agent_env(**self.shared),
        }

    def take(self, run_id: str, index: int) -> tuple[str, str] | None:
        """An idle worker young enough to wait for a job, now this variation's: (name, id)."""
        young = time.time() - self.settings.WARM_MAX_AGE_SECONDS
        for name, (worker_id, started) in list(self.idle.items()):
            if started >= young:
                del self.idle[name]  # no await between choosing and taking: no one else gets it
                self.taken[name] = (run_id, index, time.time())
                return name, worker_id
        return None

    def name_of(self, run_id: str, index: int) -> str:
        return next(n for n, (r, i, _) in self.taken.items() if (r, i) == (run_id, index))

    def job_of(self, w: Worker) -> tuple[str, int] | None:
        taken = self.taken.get(w.warm or "")
        return (taken[0], taken[1]) if taken else None

    def owns_idle(self, w: Worker) -> bool:
        return w.warm in self.starting or w.warm in self.idle

    async def tend(self, listed: list[Worker], listed_at: float) -> None:
        """Called by each reaper pass with what it listed: drop what left or grew old, top up."""
        running = {w.warm for w in listed if w.warm and w.running}
        names = {w.warm for w in listed if w.warm}
        young = time.time() - self.settings.WARM_MAX_AGE_SECONDS
        for name, (worker_id, started) in list(self.idle.items()):
            if started < listed_at and (name not in running or started < young):
                if name not in running:  # it should wait WARM_MAX_AGE_SECONDS + 60 s: say so
                    logger.warning("warm worker %s left while idle; replacing it", name)
                del self.idle[name]
                await asyncio.to_thread(self.workers.remove, worker_id)
        for name, (_, _, when) in list(self.taken.items()):
            if when < listed_at and name not in names:  # removed after its variation
                del self.taken[name]
        missing = self.settings.WARM_WORKERS - len(self.idle) - len(self.starting)
        if self.closed or time.time() < self.retry_at:
            return
        for _ in range(max(0, missing)):
            task = asyncio.create_task(self.add_one())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def add_one(self) -> None:
        name = f"{self.settings.DEPLOYMENT}-warm-{uuid.uuid4().hex[:12]}"
        self.starting.add(name)
        try:
            environment = await self.environment(name)
            worker_id = await asyncio.to_thread(self.workers.start_warm, name, environment)
        except Exception as exc:
            logger.warning("a warm worker did not start (retrying in 10 s): %r", exc)
            self.retry_at = time.time() + 10
            return
        finally:
            self.starting.discard(name)
        if self.closed:
            await asyncio.to_thread(self.workers.remove, worker_id)
        else:
            self.idle[name] = (worker_id, time.time())

    async def hand_over(self, job, agent: dict) -> None:
        """The job of a variation that took a warm worker: the same variables a cold worker gets,
        but no secret (Job.to_env), sent on the worker's own list."""
        name = self.name_of(job.RUN_ID, job.VARIATION)
        await self.runs.send_job(name, job.to_env(False, **agent))

    async def mark_alive(self) -> None:
        """Each reaper pass, before it lists: idle warm workers leave once this key expires."""
        alive = contract.warm_alive_key(self.settings.DEPLOYMENT)
        await self.reaper_runs.client.set(alive, time.time(), ex=15)

    async def with_jobs(self, workers: list[Worker]) -> list[Worker]:
        """A warm worker named by the job it does; the idle ones, waiting for a job, are the
        pool's and left out. (A cold worker's labels name its run and variation already.)"""
        unknown = [w for w in workers if w.warm and not self.owns_idle(w) and not self.job_of(w)]
        doing = await self.reaper_runs.containers_of_active() if unknown else {}  # a restart
        found = []
        for w in workers:
            if w.warm:
                if self.owns_idle(w):
                    continue
                # Its job from this API's memory, or from Redis (adopted after a restart); with
                # neither, an orphan: its run ended, or a previous API started it. Removed.
                run_id, index = self.job_of(w) or doing.get(w.id) or ("", -1)
                w = dataclasses.replace(w, run_id=run_id, index=index)
            found.append(w)
        return found

    def wanted_users(self) -> set[str]:
        """The Redis users of the warm workers starting, idle or taken: kept by the sweep."""
        names = {*self.starting, *self.idle, *self.taken}
        return {self.users.warm_user(n) for n in names}

    async def close(self) -> None:
        """On shutdown: the idle ones are removed; taken ones finish, as every variation does."""
        self.closed = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        idle, self.idle = list(self.idle.values()), {}
        await asyncio.gather(*(asyncio.to_thread(self.workers.remove, i) for i, _ in idle))
