"""Lesson 05, step 1: one variation of the research agent in a container, its events in Redis.

Run it:  make lesson-05 STEP=1   (builds the image, starts Redis on a Docker network of its own)
"""

import os
import uuid

import redis

from lesson05.container import start
from research_agent import worker_events_key

REDIS_URL = os.environ["REDIS_URL"]  # Redis for this script, allowed every key (make sets it)
QUERY = "How do I stop a container gracefully?"
r = redis.Redis.from_url(REDIS_URL, decode_responses=True)


def follow(streams: dict[str, str], container) -> None:
    """Print each event the worker adds to its stream, as it comes, until the worker exits."""
    while True:
        container.reload()
        exited = container.status == "exited"  # asked first: once it has, all is written
        found = r.xread(streams, block=None if exited else 1000)  # None: no wait; 1000: up to 1 s
        for key, entries in found:
            for entry_id, fields in entries:
                streams[key] = entry_id  # the next read starts after it
                if fields["event"] != "token":  # a token is a word; `final` has the whole answer
                    print(f"{fields['event']:<13}{fields['data'][:80]}")
        if exited and not found:
            return


def main() -> None:
    run_id = uuid.uuid4().hex
    container = start(run_id, 0, QUERY)
    print(f"Run {run_id}: variation 0 in container {container.short_id}")
    follow({worker_events_key(run_id, 0): "0-0"}, container)  # 0-0: from the stream's start
    exit_code = container.wait()["StatusCode"]  # the worker's last word
    container.remove()
    print(f"Exit code {exit_code}; the container is removed")


if __name__ == "__main__":
    main()
