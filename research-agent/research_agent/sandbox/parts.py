"""Lesson 04's runner with every part its settings ask for, put together in one place.

    SandboxRunner    one fresh container per run (runner.py), on the egress network when
                     SANDBOX_EGRESS=allowlist (EgressGateway, egress.py)
    ContainerPool    containers started ahead, SANDBOX_POOL_SIZE to _MAX (pool.py)
    Sweeper          expired leftovers removed, at start-up and on a timer (sweep.py)
    QueuedRunner     `arun`: bounded, from the event loop, in front of them (admission.py)

Lesson 04's API, the research agent's run_python tool and lesson 08's python server each run
what this returns.
"""

from ..settings import SandboxConfig
from .admission import QueuedRunner
from .egress import EgressGateway
from .pool import ContainerPool
from .runner import SandboxRunner
from .sweep import Sweeper


def sandbox_runner(config: SandboxConfig, client=None) -> QueuedRunner:
    """A QueuedRunner over a SandboxRunner, with egress, a pool and a sweeper as `config` says."""
    network = EgressGateway(config) if config.egress_on else None
    runner = SandboxRunner(config, client, network=network)
    pool = ContainerPool(runner) if config.largest_pool else None
    return QueuedRunner(runner, pool=pool, sweeper=Sweeper(runner))
