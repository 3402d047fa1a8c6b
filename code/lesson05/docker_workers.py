"""The containers of lesson 05 (docs/05, "The containers and how they end"): one labelled,
resource-limited container per variation, run by the Docker SDK, and what its ending means for its
variation (ending). The SDK blocks (HTTP to the engine): the API calls each method in a thread,
never on the event loop.

Every worker is created with `auto_remove`: the engine removes it the moment it exits, so nothing
is left behind even when the API was killed (`kill -9`) and no API comes back to sweep. A removed
container cannot be inspected, so how it ended (exit code, OOM kill) is read from the engine's
events, watched from the moment this backend exists (as lesson 04's sandbox does in
research_agent/sandbox/exit.py).
"""

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import docker

from research_agent import EXIT_REASONS as WORKER_EXIT_REASONS
from research_agent import docker_client

logger = logging.getLogger("variations")


EXIT_REASONS = {  # what a worker's exit code means
    **WORKER_EXIT_REASONS,  # 1 to 4: the worker's own codes
    137: "killed (SIGKILL): out of memory or stopped from outside",
}

# How long list() waits for the ending of a container it knew and no longer finds (the engine
# sends "die" before it removes the container; the watch may read it a moment later).
ENDING_WAIT_SECONDS = 2.0


@dataclass
class Worker:
    id: str
    run_id: str  # "" for a warm worker: its job is known to the API and Redis, not to its labels
    index: int
    running: bool
    warm: str | None = None  # a warm worker's name (its queue's), else None


class DockerWorkers:
    def __init__(self, settings):
        self.settings = settings
        self.client = docker_client(timeout=60)
        self.labels = {
            "ai-course.role": "variation-worker",
            "ai-course.deployment": settings.DEPLOYMENT,
        }
        # container id -> (its labels, exit code, OOM-killed), from the engine's events; an entry
        # goes when remove() is called for it. `known`: ids started or listed running, whose
        # ending list() waits for if they vanish.
        self.endings: dict[str, tuple[dict, int | None, bool]] = {}
        self.known: set[str] = set()
        self.changed = threading.Condition()
        self.closed = threading.Event()
        self.events = None
        self.watching = threading.Thread(target=self._watch, name="worker-endings", daemon=True)
        self.watching.start()

    def _watch(self) -> None:
        """Record every "oom" and "die" of this deployment's containers, reconnecting (from the
        last event seen) should the engine go away."""
        since = time.time()
        filters = {
            "type": "container",
            "event": ["oom", "die"],
            "label": [f"{k}={v}" for k, v in self.labels.items()],
        }
        while not self.closed.is_set():
            try:
                self.events = self.client.events(since=since, filters=filters, decode=True)
                for event in self.events:
                    since = event.get("time", since)
                    self._note(event)
            except Exception as exc:  # the engine restarted, or close() cut the stream
                if not self.closed.is_set():
                    logger.warning("watching workers' endings failed (again in 1 s): %r", exc)
            self.closed.wait(1)

    def _note(self, event: dict) -> None:
        actor = event.get("Actor", {})
        worker_id, labels = actor.get("ID") or event.get("id"), actor.get("Attributes", {})
        with self.changed:
            _, code, oom = self.endings.get(worker_id, (labels, None, False))
            if event.get("Action") == "oom":
                oom = True
            elif labels.get("exitCode") is not None:
                code = int(labels["exitCode"])
            self.endings[worker_id] = (labels, code, oom)
            self.changed.notify_all()

    def close(self) -> None:
        self.closed.set()
        if self.events is not None:
            self.events.close()

    def check(self) -> None:
        try:
            self.client.images.get(self.settings.WORKER_IMAGE)
        except docker.errors.ImageNotFound:
            raise RuntimeError(
                f"image {self.settings.WORKER_IMAGE} not found: `make lesson-05` builds it"
            ) from None

    def start(self, run_id: str, index: int, environment: dict[str, str]) -> str:
        worker_id = self._run(
            ["python", "-m", "research_agent.worker"],  # a list: no shell ever parses the query
            environment,  # the job travels as data
            name=f"{self.settings.DEPLOYMENT}-{run_id[:12]}-{index}",
            labels={"ai-course.run": run_id, "ai-course.variation": str(index)},
        )
        with self.changed:
            self.known.add(worker_id)
        return worker_id

    def start_warm(self, name: str, environment: dict[str, str]) -> str:
        """A worker with no job yet: the same image, flags and limits, `--warm`
        (research_agent/worker/worker.py)."""
        return self._run(
            ["python", "-m", "research_agent.worker", "--warm"],
            environment,
            name=name,
            labels={"ai-course.run": "", "ai-course.variation": "-1", "ai-course.warm": name},
        )

    def _run(self, command: list[str], environment: dict[str, str], name: str, labels: dict) -> str:
        s = self.settings
        container = self.client.containers.run(
            s.WORKER_IMAGE,
            command,
            environment=environment,
            name=name,
            labels={**self.labels, **labels},
            detach=True,
            network=s.WORKER_NETWORK,
            mem_limit=s.WORKER_MEMORY,
            memswap_limit=s.WORKER_MEMORY,  # no swap: over the limit means OOM-killed, not slow
            nano_cpus=int(s.WORKER_CPUS * 1e9),
            pids_limit=s.WORKER_PIDS,
            read_only=True,
            auto_remove=True,  # removed by the engine as it exits, with or without this API
            tmpfs={"/tmp": "size=16m"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            # The image's HEALTHCHECK asks an HTTP port that workers never open: switch it off.
            healthcheck={"test": ["NONE"]},
            # A model server on the host, as Docker Desktop names it (docs/03, "A model server").
            extra_hosts={"host.docker.internal": "host-gateway"},
        )
        return container.id

    def list(self) -> list[Worker]:
        """The deployment's containers, and those that ended since (the engine removed them)."""
        filters = {"label": [f"{k}={v}" for k, v in self.labels.items()]}
        found = self.client.containers.list(all=True, sparse=True, filters=filters)
        listed = {c.id: c.attrs for c in found}
        with self.changed:
            vanished = self.known - set(listed)
            self.changed.wait_for(
                lambda: vanished <= set(self.endings), timeout=ENDING_WAIT_SECONDS
            )
            ended = dict(self.endings)
            self.known = {i for i, c in listed.items() if c["State"] != "exited"} | (
                vanished - set(ended)  # no ending yet: looked for again next time
            )
        workers = [
            self._worker(i, c["Labels"], c["State"] in ("created", "running", "restarting"))
            for i, c in listed.items()
        ]
        return workers + [self._worker(i, e[0], False) for i, e in ended.items() if i not in listed]

    @staticmethod
    def _worker(worker_id: str, labels: dict, running: bool) -> Worker:
        return Worker(
            id=worker_id,
            run_id=labels["ai-course.run"],
            index=int(labels["ai-course.variation"]),
            running=running,
            warm=labels.get("ai-course.warm") or None,
        )

    def outcome(self, worker_id: str) -> tuple[int, bool]:
        with self.changed:  # the engine said how it ended: it may be gone already
            self.changed.wait_for(
                lambda: self.endings.get(worker_id, ({}, None))[1] is not None,
                timeout=ENDING_WAIT_SECONDS,
            )
            _, code, oom = self.endings.get(worker_id, ({}, None, False))
        if code is not None:
            return code, oom
        state = self.client.containers.get(worker_id).attrs["State"]
        return state["ExitCode"], state["OOMKilled"]

    def logs(self, worker_id: str) -> str:
        return self.client.containers.get(worker_id).logs(tail=20).decode(errors="replace")

    def remove(self, worker_id: str) -> None:
        with self.changed:
            self.endings.pop(worker_id, None)
            self.known.discard(worker_id)
        try:
            self.client.containers.get(worker_id).remove(force=True)  # kills it if still running
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            # 409 "removal already in progress": another remove (a second DELETE, the reaper)
            # got there first. Wait (10 s at most) until it is done, so that an answered DELETE
            # means the container is gone, whichever request did the work.
            if exc.status_code != 409:
                raise
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    self.client.containers.get(worker_id)
                except docker.errors.NotFound:
                    return
                time.sleep(0.1)


async def log_tail(workers, worker_id: str) -> str:
    """A worker's last log lines, for the server's log; they help a reader, so an outcome is
    recorded without them if the engine cannot give them."""
    try:
        return await asyncio.to_thread(workers.logs, worker_id)
    except Exception as exc:
        return f"(no logs: {exc!r})"


async def ending(workers, w: Worker, v: dict, memory: str) -> tuple[str, dict]:
    """How a worker that exited ended, for its variation (`v`, read after its last events were
    copied): `succeeded` if it exited 0 with an answer, else `failed` with a reason (killed at the
    `memory` limit, what its exit code means), and the details kept. A failure's last log lines
    go to the server's log, never into the run's stream."""
    exit_code, oom_killed = await asyncio.to_thread(workers.outcome, w.id)
    status = "succeeded" if exit_code == 0 and "result" in v else "failed"
    if status == "succeeded":
        reason = None
    elif oom_killed:
        reason = f"out of memory: killed at the {memory} limit"
    elif exit_code == 0:
        reason = "exited without an answer"
    else:
        reason = EXIT_REASONS.get(exit_code, f"exited with code {exit_code}")
    if status == "failed":
        tail = await log_tail(workers, w.id)
        logger.warning("variation %s/%d failed (%s):\n%s", w.run_id, w.index, reason, tail)
    return status, {"exit_code": exit_code, "oom_killed": oom_killed, "reason": reason}
