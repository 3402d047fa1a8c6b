"""The sandbox's settings: one frozen class for every part of the runner, so a runner's limits
cannot change under it, read from the SANDBOX_* variables (a field a variable: `timeout_seconds`
is SANDBOX_TIMEOUT_SECONDS).

The container's own limits (image, runtime, timeout, memory, CPU, processes, /tmp, output, uid
range, owner label) are what runner.py's container spec reads; the rest belong to the parts
built on it: admission (max_concurrent, max_queued, max_per_caller), the sweep
(sweep_interval_seconds), the pool (pool_size, pool_max, pool_budget_mib, pool_idle_seconds) and
egress (egress, allowed_hosts, credentials, the proxy's image, caps and way out: egress.py).

`SandboxConfig()` reads no variable: it is the defaults. A service reads its sandbox's settings
with a subclass that names, in `settable`, the fields its environment may set, and gives its own
defaults (lesson 04's owner label, the research agent's): every SANDBOX_* variable is this one
declaration, whichever service reads it.
"""

from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class SandboxConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SANDBOX_", env_ignore_empty=True, frozen=True, populate_by_name=True
    )
    # The fields a service's environment may set (SANDBOX_ + the name); none here.
    settable: ClassVar[frozenset[str]] = frozenset()

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
    # Admission (admission.py).
    max_concurrent: int = 4  # containers at once; more runs wait for a free slot...
    max_queued: int = 8  # ...but no more than this many: the next one is refused (SandboxBusy)
    # runs one caller may have running or waiting at once (SANDBOX_MAX_PER_CLIENT)
    max_per_caller: int = Field(
        2, validation_alias=AliasChoices("max_per_caller", "SANDBOX_MAX_PER_CLIENT")
    )
    # The sweep (sweep.py): how often a running service removes expired containers.
    sweep_interval_seconds: float = 30.0
    # The pool (pool.py): containers created and started ahead, each for one run (0: none).
    # They count toward max_concurrent, and serve runs whose timeout is at most timeout_seconds.
    # It keeps at least pool_size (its minimum), and grows with demand up to pool_max (None: no
    # growth), no further than pool_budget_mib of idle containers' measured memory (None: none).
    pool_size: int = 0
    pool_max: int | None = None
    pool_budget_mib: float | None = None
    pool_idle_seconds: float = 120.0  # a pooled container unused this long ends by itself
    # Egress (egress.py): "none", no network at all; "allowlist", each run's container on
    # an internal network whose only other member is an egress proxy that lets through the
    # allowed hosts and adds the declared credentials. Asked as `egress_on`.
    egress: Literal["none", "allowlist"] = "none"
    allowed_hosts: str = ""  # exact names and *.suffix patterns, separated by commas or spaces
    # One declared upstream per line, HOST=Header-Name: value; ${VAR} is filled in by the proxy
    # from its own environment, where the runner puts VAR from its own (never a sandbox's).
    credentials: str = ""
    egress_proxy_image: str = "egress-proxy:squid"
    egress_max_bytes: int = 256 * 1024 * 1024  # per run, both directions
    egress_max_requests: int = 500  # per run
    egress_upstream_network: str = "bridge"  # the proxy's way out
    egress_upstream_ca: str | None = None  # a PEM file (host path): extra CAs for the upstreams
    # Each run's network is a /29 of these (its own, internal: no host route, so it may overlap
    # a network the host is on; it may not overlap another Docker network).
    egress_subnets: str = "10.213.0.0/16"

    @model_validator(mode="after")
    def _consistent(self) -> "SandboxConfig":
        if not 0 <= self.pool_size <= self.max_concurrent:
            raise ValueError(f"pool_size must be 0 to max_concurrent ({self.max_concurrent})")
        if not self.pool_size <= self.largest_pool <= self.max_concurrent:
            raise ValueError(
                f"pool_max must be pool_size to max_concurrent ({self.max_concurrent})"
            )
        if self.egress_on and not (self.allowed_hosts.strip() or self.credentials):
            raise ValueError("egress=allowlist needs SANDBOX_ALLOWED_HOSTS or SANDBOX_CREDENTIALS")
        return self

    @property
    def egress_on(self) -> bool:
        """Each run gets a network of its own, to the allowed hosts through the egress proxy."""
        return self.egress == "allowlist"

    @property
    def largest_pool(self) -> int:
        """The most containers the pool holds (pool_max, or pool_size when it does not grow)."""
        return self.pool_size if self.pool_max is None else self.pool_max

    def pids_for(self, runtime: str | None) -> int:
        """The container's process limit under `runtime`. gVisor's kernel runs in the container's
        cgroup, and its own threads (on the ptrace platform, a host thread per program thread and
        more) count: the same program needs about four times the places there."""
        return self.pids * GVISOR_PIDS_FACTOR if runtime in GVISOR_RUNTIMES else self.pids

    def runtime_for(self, network: bool) -> str | None:
        """The runtime of a container with (or without) a network."""
        return NETWORK_RUNTIMES.get(self.runtime, self.runtime) if network else self.runtime

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _SettableOnly(settings_cls)


class _SettableOnly(EnvSettingsSource):
    """The environment, for the fields a class names in `settable` only."""

    def get_field_value(self, field: FieldInfo, field_name: str):
        if field_name not in self.settings_cls.settable:
            return None, field_name, False
        return super().get_field_value(field, field_name)


# gVisor is registered twice (scripts/gvisor.sh): runsc has no network and can never be given one;
# runsc-net uses the network Docker gives the container, attached before or after it starts.
NETWORK_RUNTIMES = {"runsc": "runsc-net"}
GVISOR_RUNTIMES = {"runsc", "runsc-net"}
GVISOR_PIDS_FACTOR = 4

# The fields lesson 04's API reads from its environment: every one a service may set.
SETTABLE = frozenset(
    {
        "image",
        "runtime",
        "timeout_seconds",
        "max_concurrent",
        "max_queued",
        "max_per_caller",
        "owner",
        "sweep_interval_seconds",
        "pool_size",  # the pool's minimum
        "pool_max",
        "pool_budget_mib",
        "egress",
        "allowed_hosts",
        "credentials",
        "egress_proxy_image",
        "egress_max_bytes",
        "egress_max_requests",
        "egress_upstream_network",
        "egress_upstream_ca",
    }
)
