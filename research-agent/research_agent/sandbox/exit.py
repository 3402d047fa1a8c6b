"""How a run's end is read when the engine removes its container by itself.

Every sandbox container is created with `auto_remove`: the engine removes it the moment it exits,
so nothing is left behind even when the API that started it was killed (kill -9, out of memory)
and no sweep comes for minutes. Once removed it cannot be inspected, so what the runner needs from
its end comes from the engine's events for that one container, watched from before the run starts:
"oom" if the kernel's OOM killer struck, "die" with the exit code, "destroy" once it is gone.
"""

import contextlib
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Ending:
    exit_code: int | None  # None: the engine said nothing within the bound
    oom_killed: bool


class EndWatch:
    """Opened before the container starts (or, pooled, before its run is sent): no event is
    missed. `within` seconds bound the wait: the engine ends the stream then."""

    def __init__(self, client, container_id: str, within: float):
        now = time.time()
        self._events = client.events(
            since=int(now),
            until=int(now + within) + 1,
            filters={"container": container_id, "event": ["oom", "die", "destroy"]},
            decode=True,
        )

    def ending(self) -> Ending:
        """Block until the container is removed (or the bound passes) and say how it ended."""
        exit_code, oom_killed = None, False
        for event in self._events:
            action = event.get("Action")
            if action == "oom":
                oom_killed = True
            elif action == "die":
                code = event.get("Actor", {}).get("Attributes", {}).get("exitCode")
                exit_code = None if code is None else int(code)
            elif action == "destroy":  # gone: the run's answer never names a container left
                break
        return Ending(exit_code, oom_killed)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the engine closed it already
            self._events.close()
