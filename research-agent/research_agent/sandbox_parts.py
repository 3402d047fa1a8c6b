"""Lesson 04's runner with every part its settings ask for, put together in one place.

    SandboxRunner    one fresh container per run (sandbox.py), on the egress network when
                     SANDBOX_EGRESS=allowlist (EgressGateway, sandbox_egress.py)
    ContainerPool    SANDBOX_POOL_SIZE containers started ahead (sandbox_pool.py)
    Sweeper          expired leftovers removed, at start-up and on a timer (sandbox_sweep.py)
    QueuedRunner     `arun`: bounded, from the event loop, in front of them (sandbox_admission.py)

Lesson 04's API, the research agent's run_python tool and lesson 08's python server each run
what this returns.
"""

from .sandbox import SandboxRunner
from .sandbox_admission import QueuedRunner
from .sandbox_config import SandboxConfig
from .sandbox_egress import EgressGateway
from .sandbox_pool import ContainerPool
from .sandbox_sweep import Sweeper


def sandbox_runner(config: SandboxConfig, client=None) -> QueuedRunner:
    """A QueuedRunner over a SandboxRunner, with egress, a pool and a sweeper as `config` says."""
    network = EgressGateway(config) if config.egress == "allowlist" else None
    runner = SandboxRunner(config, client, network=network)
    pool = ContainerPool(runner) if config.pool_size else None
    return QueuedRunner(runner, pool=pool, sweeper=Sweeper(runner))
