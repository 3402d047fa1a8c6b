"""Lesson 05's "Going further", one module per topic of docs/05-parallel-variations.md:

    presets.py        what the variations change
    redis_access.py   who may do what in Redis: a user per worker, the relay, back-off
    guards.py         owner tokens and cookies, per-client caps, stream slots, Host, models
    store.py          the Redis layout, and the script that ends a variation exactly once
    docker_workers.py the containers: limits, labels, and how their endings are read
    recovery.py       what a restarted API finds, and adopts
    warm.py           warm workers: started ahead, each for one variation
    traces.py         a run as one trace, every variation's worker in it (lesson 09)

The lesson (code/05_variations_api.py) is the core path and plugs these in.
"""

import sys
from pathlib import Path

# The worker's contract (app/job.py) lives in the research agent: on sys.path once, never twice.
AGENT_DIR = str(Path(__file__).resolve().parents[2] / "research-agent")
if AGENT_DIR not in sys.path:
    sys.path.insert(0, AGENT_DIR)
