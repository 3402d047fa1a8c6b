"""Every setting of the service, read from environment variables: one class per layer, and
`Settings`, the one class the service (research_agent/app.py) reads.

`AgentSettings` is lesson 02's core: the agent's own settings. Each layer has its own class here,
named after what reads it, which reads that layer's variables and is what the layer is built from
(access/ takes `AccessSettings`, lesson 04's runner `SandboxConfig`, lesson 09's tracing
`TracingSettings`). `Settings` is the core with each layer's class as a field
(`settings.cache.REDIS_URL`). Nothing here imports another module of the package: every layer, and
lesson 04's, 05's, 07's and 08's own services, reads its settings without loading the others.
"""

import ipaddress
from functools import cache, lru_cache
from pathlib import Path
from typing import ClassVar, Literal

from limits import parse as parse_limit
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV = SettingsConfigDict(env_ignore_empty=True)  # VAR= (as in .env.example) means the default

APP_DIR = Path(__file__).resolve().parent.parent  # research-agent/
BUNDLED_NOTES_DIR = APP_DIR / "notes"
REPO_DOCS_DIR = APP_DIR.parent / "docs"  # the course text: DOCS_DIR=../docs make research-agent

OFFLINE_MODEL_NAME = "offline-research-model"


# --- Lesson 02's core: the agent ------------------------------------------------------------------


class AgentSettings(BaseSettings):
    """The agent's settings (research_agent/agent.py, search.py): field name = variable name."""

    model_config = ENV

    APP_VERSION: str = "1.0.0"

    # Model: without a key the deterministic offline model answers from search results.
    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    OPENAI_MAX_RETRIES: int = 2
    MODEL_NAME: str = "gpt-4o-mini"
    TEMPERATURE: float = 0.2
    MAX_MODEL_CALLS: int = 5
    OFFLINE_TOKEN_DELAY_MS: int = 15
    REQUEST_TIMEOUT_SECONDS: float = 30.0

    # Search: "auto" means local when offline, duckduckgo when a real model is configured.
    SEARCH_BACKEND: Literal["auto", "local", "duckduckgo"] = "auto"
    SEARCH_MAX_RESULTS: int = 4
    SEARCH_TIMEOUT_SECONDS: float = 10.0
    DOCS_DIR: Path | None = None

    @property
    def offline(self) -> bool:
        return self.OPENAI_API_KEY is None or not self.OPENAI_API_KEY.get_secret_value()

    @property
    def model_label(self) -> str:
        return OFFLINE_MODEL_NAME if self.offline else self.MODEL_NAME

    @property
    def search_backend(self) -> str:
        if self.SEARCH_BACKEND != "auto":
            return self.SEARCH_BACKEND
        return "local" if self.offline else "duckduckgo"

    @property
    def docs_dirs(self) -> list[Path]:
        """Folders searched by the local backend: the bundled notes, and DOCS_DIR when it is set."""
        extra = [self.DOCS_DIR] if self.DOCS_DIR is not None else []
        dirs = [d.resolve() for d in (*extra, BUNDLED_NOTES_DIR) if d.is_dir()]
        return list(dict.fromkeys(dirs))  # DOCS_DIR=notes must not index the notes twice


# --- Lesson 02's layers (docs/02, Going further) --------------------------------------------------


class ServerSettings(BaseSettings):
    """Where it listens and how it logs (main.py, research_agent/observability/metrics.py), and the
    body limit (research_agent/web/middleware.py)."""

    model_config = ENV

    HOST: str = "0.0.0.0"
    PORT: int = 8000
    LOG_LEVEL: str = "INFO"
    MAX_BODY_BYTES: int = 16_384


class CacheSettings(BaseSettings):
    """The answer cache (research_agent/cache.py; docs/02, section 7)."""

    model_config = ENV

    REDIS_URL: str | None = None  # the cache's, and the limits' counts (access/limits/)
    CACHE_TTL_SECONDS: int = 3600
    # Whose answers a request may be served from: "caller" its own caller's only, so a cached
    # answer tells nobody what another caller asked; "shared" everyone's, more hits for callers
    # who trust one another (one team, one front end).
    CACHE_SCOPE: Literal["caller", "shared"] = "caller"
    CACHE_BREAKER_SECONDS: float = 10.0


class AccessSettings(BaseSettings):
    """Who may call /v1 and how much (research_agent/access/keys.py,
    research_agent/access/quotas.py; docs/02, section 8). Keys are secrets: never in an image, only
    in the environment or a mounted file."""

    model_config = ENV

    API_KEYS: SecretStr | None = None  # "name:key,name2:key2" (the name is what logs show)
    API_KEYS_FILE: Path | None = None  # one "name:key" per line: a Docker/Kubernetes secret
    RATE_LIMIT: str = "30/minute"  # requests per caller, moving window; "off": no limit
    # 401s per client address, moving window; past it, every request from that address is a 429
    # until the window moves on (a right key included: otherwise a right guess would show).
    AUTH_FAILURE_LIMIT: str = "10/minute"
    MAX_STREAMS_PER_CALLER: int = 4  # open /v1/research/stream per caller; 0: no cap
    TOKEN_BUDGET_PER_DAY: int = 0  # model tokens per caller per window; 0: no budget
    TOKEN_BUDGET_WINDOW_SECONDS: int = 86_400  # the budget's window: a day
    # Taken from the budget when a request is admitted, settled to the real count when it ends:
    # requests sent together overrun the budget by at most one run of up to this many tokens.
    # Set it to your model's largest run (an offline answer is about 500 tokens).
    TOKENS_RESERVED_PER_RUN: int = 4000
    # When Redis cannot count: "local" counts in this process (each replica enforces the limits
    # on its own), "closed" answers 503, "open" lets everything through.
    LIMITS_FAIL_MODE: Literal["local", "closed", "open"] = "local"
    # The proxies whose X-Forwarded-For names the caller (addresses or CIDRs, comma-separated, or
    # "*" alone). Empty: nobody's, so a caller cannot pick its own address and with it a fresh
    # rate limit.
    FORWARDED_ALLOW_IPS: str = ""

    @field_validator("RATE_LIMIT", "AUTH_FAILURE_LIMIT")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        if value.strip().lower() != "off":
            parse_limit(value)  # "30/minute", "5 per second", "100/hour"...: ValueError otherwise
        return value.strip()

    @field_validator("FORWARDED_ALLOW_IPS")
    @classmethod
    def _forwarders_are_addresses(cls, value: str) -> str:
        """Uvicorn compares an entry that is not an address or a network as a plain string, which
        no proxy's address ever equals: its header is then ignored and every caller behind it is
        the proxy's one address, one rate limit and one AUTH_FAILURE_LIMIT for all. Refused."""
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        if entries == ["*"]:
            return "*"
        for entry in entries:
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry)  # strict, as uvicorn parses it: no host bits
                else:
                    ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or a network such as 10.0.0.0/24 (with "
                    'no host bits), nor "*" alone: uvicorn would never match it, and every '
                    "caller behind the proxy would count as one address"
                ) from None
        return ",".join(entries)

    @property
    def rate_limit_enabled(self) -> bool:
        return self.RATE_LIMIT.lower() != "off"


class ShutdownSettings(BaseSettings):
    """The shutdown budget (research_agent/web/shutdown.py; docs/02, section 14): on SIGTERM
    /ready turns 503 at once, new requests are still served for SHUTDOWN_DRAIN_SECONDS so a load
    balancer notices, then the listener closes and open requests get GRACEFUL_SHUTDOWN_SECONDS.
    1 + 8 stays inside `docker stop`'s 10 s."""

    model_config = ENV

    SHUTDOWN_DRAIN_SECONDS: float = 1.0
    GRACEFUL_SHUTDOWN_SECONDS: float = 8.0


# --- Lesson 04: the sandbox -----------------------------------------------------------------------


class SandboxConfig(BaseSettings):
    """The sandbox's settings: one frozen class for every part of the runner, so a runner's limits
    cannot change under it, read from the SANDBOX_* variables (a field a variable:
    `timeout_seconds` is SANDBOX_TIMEOUT_SECONDS).

    The container's own limits (image, runtime, timeout, memory, CPU, processes, /tmp, output, uid
    range, owner label) are what research_agent/sandbox/runner.py's container spec reads; the rest
    belong to the parts built on it: admission (max_concurrent, max_queued, max_per_caller), the
    sweep (sweep_interval_seconds), the pool (pool_size, pool_max, pool_budget_mib,
    pool_idle_seconds) and egress (egress, allowed_hosts, credentials, the proxy's image, caps and
    way out: sandbox/egress.py).

    `SandboxConfig()` reads no variable: it is the defaults. A service reads its sandbox's settings
    with a subclass that names, in `settable`, the fields its environment may set, and gives its
    own defaults (lesson 04's owner label, the research agent's): every SANDBOX_* variable is this
    one declaration, whichever service reads it."""

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
    # Admission (sandbox/admission.py).
    max_concurrent: int = 4  # containers at once; more runs wait for a free slot...
    max_queued: int = 8  # ...but no more than this many: the next one is refused (SandboxBusy)
    # runs one caller may have running or waiting at once (SANDBOX_MAX_PER_CLIENT)
    max_per_caller: int = Field(
        2, validation_alias=AliasChoices("max_per_caller", "SANDBOX_MAX_PER_CLIENT")
    )
    # The sweep (sandbox/sweep.py): how often a running service removes expired containers.
    sweep_interval_seconds: float = 30.0
    # The pool (sandbox/pool.py): containers created and started ahead, each for one run (0:
    # none). They count toward max_concurrent, and serve runs whose timeout is at most
    # timeout_seconds. It keeps at least pool_size (its minimum), and grows with demand up to
    # pool_max (None: no growth), no further than pool_budget_mib of idle containers' measured
    # memory (None: none).
    pool_size: int = 0
    pool_max: int | None = None
    pool_budget_mib: float | None = None
    pool_idle_seconds: float = 120.0  # a pooled container unused this long ends by itself
    # Egress (sandbox/egress.py): "none", no network at all; "allowlist", each run's container on
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
    def reads_from_env(cls, name: str, field: FieldInfo) -> bool:
        return name in cls.settable

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _ItsOwnVariables(settings_cls)


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


class SandboxSettings(SandboxConfig):
    """run_python in a throwaway container (research_agent/sandbox/python_tool.py, lesson 04):
    lesson 04's settings (SandboxConfig, above), of which the research agent reads
    SANDBOX_ENABLED (off: it needs the Docker API, which is root on the host; see
    docs/04-sandboxed-tools.md before turning it on), SANDBOX_IMAGE, SANDBOX_RUNTIME (runc;
    "runsc": gVisor, when the Docker daemon offers it), SANDBOX_TIMEOUT_SECONDS, SANDBOX_POOL_SIZE
    (containers started ahead, at least; the pool grows with demand to SANDBOX_POOL_MAX within
    SANDBOX_POOL_BUDGET_MIB of idle containers' memory; see docs/04, "What it costs") and egress:
    with SANDBOX_EGRESS=allowlist, run_python reaches SANDBOX_ALLOWED_HOSTS through an egress proxy
    that adds SANDBOX_CREDENTIALS' headers (docs/04, "The network as a capability"). Its
    containers are labelled research-agent."""

    settable = frozenset(
        {
            "enabled",
            "image",
            "runtime",
            "timeout_seconds",
            "pool_size",
            "pool_max",
            "pool_budget_mib",
            "egress",
            "allowed_hosts",
            "credentials",
        }
    )
    enabled: bool = False  # whether the agent has run_python at all; the runner never reads it
    owner: str = "research-agent"


# --- Lesson 08: the search tool over MCP ----------------------------------------------------------


class McpSettings(BaseSettings):
    """Lesson 08: the search tool comes from this MCP gateway (research_agent/mcp/tools.py)
    instead of running in this process; unset, nothing changes. The token names this agent to the
    gateway."""

    model_config = ENV

    MCP_GATEWAY_URL: str | None = None
    MCP_GATEWAY_TOKEN: SecretStr | None = None
    MCP_SEARCH_TOOL: str = "search_notes"


# --- Lesson 09: traces ----------------------------------------------------------------------------


class TracingSettings(BaseSettings):
    """The OTEL_* variables the services decide on (research_agent/tracing/otel.py, lesson 09):
    whether traces are set up at all, over which protocol, and whether prompt and answer text go
    into spans (a privacy choice). The OpenTelemetry SDK reads the others itself (service name,
    sampler, batch sizes, headers). Its own class so that lesson 05's, 07's and 08's services,
    which have their own settings, read the same variables the same way, without loading
    OpenTelemetry."""

    model_config = ENV

    OTEL_SDK_DISABLED: bool = False
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: str | None = None
    OTEL_EXPORTER_OTLP_PROTOCOL: Literal["http/protobuf", "grpc"] = "http/protobuf"
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: Literal["http/protobuf", "grpc"] | None = None
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: bool = False

    @property
    def tracing_enabled(self) -> bool:
        """An OTLP endpoint is set and the SDK is not disabled: export traces
        (research_agent/tracing/otel.py)."""
        endpoint = self.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or self.OTEL_EXPORTER_OTLP_ENDPOINT
        return bool(endpoint) and not self.OTEL_SDK_DISABLED

    @property
    def otlp_protocol(self) -> str:
        return self.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or self.OTEL_EXPORTER_OTLP_PROTOCOL


# --- The service's settings: the core and each layer's class --------------------------------------


class Composed(BaseSettings):
    """Settings that hold other settings classes as fields, its layers: each layer reads its own
    variables (its default_factory builds it), this class's environment only its own plain
    fields, never a layer's name (SERVER, CACHE...: pydantic-settings would parse it as the
    layer's JSON).

    Built from flat names, as the environment spells them (`Settings(REDIS_URL=url)`), each name
    goes to the layer that reads that variable (`cache`), which reads the rest from the
    environment; a name of the class's own comes first, then the layers in their order. A name
    nothing reads is an error. (pydantic-settings' own nested models read `CACHE__REDIS_URL`,
    not the flat names every .env, Compose file and manifest of the course uses.)"""

    model_config = ENV

    @classmethod
    def reads_from_env(cls, name: str, field: FieldInfo) -> bool:
        return _layer(field) is None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _ItsOwnVariables(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _flat_names_to_layers(cls, values: object) -> object:
        if not isinstance(values, dict):
            return values
        routes = _routes(cls)
        kept, held = {}, {}
        for name, value in values.items():
            if name in cls.model_fields or name not in routes:
                kept[name] = value  # the class's own, or unknown: an error, as any extra field
            else:
                layer, key = routes[name]
                held.setdefault(layer, {})[key] = value
        for layer, given in held.items():
            whole = kept.get(layer, {})
            if not isinstance(whole, dict):
                raise ValueError(f"{layer} is given whole: set {sorted(given)} in it instead")
            kept[layer] = {**whole, **given}
        return kept


class _ItsOwnVariables(EnvSettingsSource):
    """The environment, for the fields its class reads from it (`reads_from_env`): a sandbox's
    settable ones, a composed class's own plain fields."""

    def get_field_value(self, field: FieldInfo, field_name: str):
        if not self.settings_cls.reads_from_env(field_name, field):
            return None, field_name, False
        return super().get_field_value(field, field_name)


def _layer(field: FieldInfo) -> type[BaseSettings] | None:
    held = field.annotation
    return held if isinstance(held, type) and issubclass(held, BaseSettings) else None


@cache  # per class, which does not change; its callers read the routes, never change them
def _routes(settings_cls: type[BaseSettings]) -> dict[str, tuple[str | None, str]]:
    """Each environment variable a settings class reads -> (the layer that reads it, or None for
    the class's own field; the name that layer takes it by): a sandbox's SANDBOX_POOL_SIZE is
    ("sandbox", "pool_size"), a held class's own names go on as they are."""
    settable = getattr(settings_cls, "settable", None)  # a sandbox's: only these are read
    prefix = settings_cls.model_config.get("env_prefix", "")
    found: dict[str, tuple[str | None, str]] = {}
    for name, field in settings_cls.model_fields.items():
        held = _layer(field)
        if held is None and (settable is None or name in settable):
            found.setdefault(f"{prefix}{name}".upper(), (None, name))
    for name, field in settings_cls.model_fields.items():
        if (held := _layer(field)) is not None:
            for variable, (inner, key) in _routes(held).items():
                found.setdefault(variable, (name, key if inner is None else variable))
    return found


class Settings(AgentSettings, Composed):
    """The service's settings: lesson 02's core, the agent's own (AgentSettings), and each layer's
    settings class as a field, read from its own variables: `settings.cache.REDIS_URL`,
    `settings.access.RATE_LIMIT`, `settings.sandbox.enabled` (SANDBOX_ENABLED).

    Tests build it from flat names, as the environment spells them:
    `Settings(OFFLINE_TOKEN_DELAY_MS=0, REDIS_URL=url, RATE_LIMIT="off")` sets the core's delay,
    `cache.REDIS_URL` and `access.RATE_LIMIT` (Composed); `cache=CacheSettings(...)` gives a layer
    whole."""

    model_config = ENV

    # The model key in a file, as Kubernetes and Docker mount a secret (an environment variable is
    # copied into every child process and readable in /proc): read when OPENAI_API_KEY is not set.
    # A missing or empty file is no key: the offline model.
    OPENAI_API_KEY_FILE: Path | None = None

    server: ServerSettings = Field(default_factory=ServerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    mcp: McpSettings = Field(default_factory=McpSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)

    @model_validator(mode="after")
    def _model_key_from_file(self) -> "Settings":
        if self.OPENAI_API_KEY is None and self.OPENAI_API_KEY_FILE is not None:
            try:
                key = self.OPENAI_API_KEY_FILE.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                key = ""
            self.OPENAI_API_KEY = SecretStr(key) if key else None
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


def variables(settings_cls: type[BaseSettings] = Settings) -> list[str]:
    """Every environment variable a settings class reads: its own fields, and those of each layer
    it holds (a sandbox's: SANDBOX_ + each field it may set)."""
    return list(_routes(settings_cls))
