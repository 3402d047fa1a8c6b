"""The sandbox's settings: one frozen dataclass for every part of the runner, so a runner's limits
cannot change under it, and the SANDBOX_* variable each field is read from.

The container's own limits (image, runtime, timeout, memory, CPU, processes, /tmp, output, uid
range, owner label) are what sandbox.py's container spec reads; the rest belong to the parts
built on it: admission (max_concurrent, max_queued, max_per_caller), the sweep
(sweep_interval_seconds), the pool (pool_size, pool_idle_seconds) and egress (egress,
allowed_hosts, credentials, the proxy's image, caps and way out: sandbox_egress.py).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class SandboxConfig:
    image: str = "agent-sandbox:python"
    # None or "runc": the daemon's default (runc). "runsc" runs the container under gVisor, if the
    # daemon offers it; a run with egress then uses NETWORK_RUNTIMES["runsc"] (runsc-net), as
    # gVisor without a network can never be given one.
    runtime: str | None = None
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
    # Egress (sandbox_egress.py): "none", no network at all; "allowlist", each run's container on
    # an internal network whose only other member is an egress proxy that lets through the
    # allowed hosts and adds the declared credentials.
    egress: str = "none"
    allowed_hosts: str = ""  # exact names and *.suffix patterns, separated by commas or spaces
    # One declared upstream per line, HOST=Header-Name: value; ${VAR} is filled in by the proxy
    # from its own environment, where the runner puts VAR from its own (never a sandbox's).
    credentials: str = ""
    egress_proxy_image: str = "egress-proxy:squid"
    egress_max_bytes: int = 256 * 1024 * 1024  # per run, both directions
    egress_max_requests: int = 500  # per run
    egress_upstream_network: str = "bridge"  # the proxy's way out
    egress_upstream_ca: str | None = None  # a PEM file (host path): extra CAs for the upstreams

    def __post_init__(self) -> None:
        if not 0 <= self.pool_size <= self.max_concurrent:
            raise ValueError(f"pool_size must be 0 to max_concurrent ({self.max_concurrent})")
        if self.egress not in ("none", "allowlist"):
            raise ValueError(f"egress must be none or allowlist, not {self.egress!r}")
        if self.egress == "allowlist" and not (self.allowed_hosts.strip() or self.credentials):
            raise ValueError("egress=allowlist needs SANDBOX_ALLOWED_HOSTS or SANDBOX_CREDENTIALS")

    def pids_for(self, runtime: str | None) -> int:
        """The container's process limit under `runtime`. gVisor's kernel runs in the container's
        cgroup, and its own threads (on the ptrace platform, a host thread per program thread and
        more) count: the same program needs about four times the places there."""
        return self.pids * GVISOR_PIDS_FACTOR if runtime in GVISOR_RUNTIMES else self.pids

    def runtime_for(self, network: bool) -> str | None:
        """The runtime of a container with (or without) a network."""
        return NETWORK_RUNTIMES.get(self.runtime, self.runtime) if network else self.runtime

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


# gVisor is registered twice (scripts/gvisor.sh): runsc has no network and can never be given one;
# runsc-net uses the network Docker gives the container, attached before or after it starts.
NETWORK_RUNTIMES = {"runsc": "runsc-net"}
GVISOR_RUNTIMES = {"runsc", "runsc-net"}
GVISOR_PIDS_FACTOR = 4

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
    "egress": "SANDBOX_EGRESS",
    "allowed_hosts": "SANDBOX_ALLOWED_HOSTS",
    "credentials": "SANDBOX_CREDENTIALS",
    "egress_proxy_image": "SANDBOX_EGRESS_PROXY_IMAGE",
    "egress_max_bytes": "SANDBOX_EGRESS_MAX_BYTES",
    "egress_max_requests": "SANDBOX_EGRESS_MAX_REQUESTS",
    "egress_upstream_network": "SANDBOX_EGRESS_UPSTREAM_NETWORK",
    "egress_upstream_ca": "SANDBOX_EGRESS_UPSTREAM_CA",
}
