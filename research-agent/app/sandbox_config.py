"""The sandbox's settings: one frozen dataclass for every part of the runner, so a runner's limits
cannot change under it, and the SANDBOX_* variable each field is read from.

The container's own limits (image, runtime, timeout, memory, CPU, processes, /tmp, output, uid
range, owner label) are what sandbox.py's container spec reads; the rest belong to the parts
built on it: admission (max_concurrent, max_queued, max_per_caller), the sweep
(sweep_interval_seconds) and the pool (pool_size, pool_idle_seconds).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxConfig:
    image: str = "agent-sandbox:python"
    runtime: str | None = None  # "runsc" runs the container under gVisor, if the daemon offers it
    timeout_seconds: float = 10.0  # wall clock, from start to kill
    memory: str = "128m"  # also the limit of memory + swap: no swapping past it
    cpus: float = 0.5
    pids: int = 64
    tmp_size: str = "16m"
    max_output_bytes: int = 64 * 1024  # per stream; the rest is never read into memory
    owner: str = "agent-sandbox"  # label value: which service started a container
    # Each run gets its own uid from this range, so no run shares per-user kernel limits (inotify
    # instances, processes) with another run, or with a host account such as nobody.
    uid_base: int = 1_500_000_000
    uid_count: int = 1_000_000
    # Admission (sandbox_admission.py).
    max_concurrent: int = 4  # containers at once; more runs wait for a free slot...
    max_queued: int = 8  # ...but no more than this many: the next one is refused (SandboxBusy)
    max_per_caller: int = 2  # runs one caller may have running or waiting at once
    # The sweep (sandbox_sweep.py): how often a running service removes expired containers.
    sweep_interval_seconds: float = 30.0
    # The pool (sandbox_pool.py): containers created and started ahead, each for one run (0: none).
    # They count toward max_concurrent, and serve runs whose timeout is at most timeout_seconds.
    pool_size: int = 0
    pool_idle_seconds: float = 120.0  # a pooled container unused this long ends by itself

    def __post_init__(self) -> None:
        if not 0 <= self.pool_size <= self.max_concurrent:
            raise ValueError(f"pool_size must be 0 to max_concurrent ({self.max_concurrent})")

    @classmethod
    def from_settings(cls, settings: object, **fixed) -> "SandboxConfig":
        """The config a service's settings name: each SANDBOX_* field the settings have (the
        research agent's have fewer than lesson 04's), then `fixed`; the rest keep the defaults."""
        found = {
            field: getattr(settings, name)
            for field, name in SETTING_NAMES.items()
            if hasattr(settings, name)
        }
        return cls(**found, **fixed)


# The environment variable of each field a service may set: one list for every service.
SETTING_NAMES = {
    "image": "SANDBOX_IMAGE",
    "runtime": "SANDBOX_RUNTIME",
    "timeout_seconds": "SANDBOX_TIMEOUT_SECONDS",
    "max_concurrent": "SANDBOX_MAX_CONCURRENT",
    "max_queued": "SANDBOX_MAX_QUEUED",
    "max_per_caller": "SANDBOX_MAX_PER_CLIENT",
    "owner": "SANDBOX_OWNER",
    "sweep_interval_seconds": "SANDBOX_SWEEP_INTERVAL_SECONDS",
    "pool_size": "SANDBOX_POOL_SIZE",
}
