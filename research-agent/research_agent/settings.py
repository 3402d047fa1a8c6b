"""Every setting of the service, read from environment variables: `Settings`, the one class the
service (research_agent/app.py) reads.

Lesson 02's core reads the agent's own (research_agent/schemas.py, AgentSettings). Each later layer
has its own settings class here, named after the module that reads it, which reads that layer's
variables and is its config; `Settings` is the core with each layer's class as a field
(`settings.cache.REDIS_URL`). The sandbox's is lesson 04's own settings class
(research_agent/sandbox/config.py), as `sandbox`.
"""

import ipaddress
from functools import cache, lru_cache
from pathlib import Path
from typing import Literal

from limits import parse as parse_limit
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .sandbox.config import SandboxConfig
from .schemas import AgentSettings
from .tracing.settings import TracingSettings

ENV = SettingsConfigDict(env_ignore_empty=True)  # VAR= (as in .env.example) means the default


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
    """The shutdown budget (research_agent/shutdown.py; docs/02, section 14): on SIGTERM /ready
    turns 503 at once, new requests are still served for SHUTDOWN_DRAIN_SECONDS so a load balancer
    notices, then the listener closes and open requests get GRACEFUL_SHUTDOWN_SECONDS. 1 + 8 stays
    inside `docker stop`'s 10 s."""

    model_config = ENV

    SHUTDOWN_DRAIN_SECONDS: float = 1.0
    GRACEFUL_SHUTDOWN_SECONDS: float = 8.0


class SandboxSettings(SandboxConfig):
    """run_python in a throwaway container (research_agent/sandbox/python_tool.py, lesson 04):
    lesson 04's settings (research_agent/sandbox/config.py), of which the research agent reads
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


class McpSettings(BaseSettings):
    """Lesson 08: the search tool comes from this MCP gateway (research_agent/mcp/tools.py)
    instead of running in this process; unset, nothing changes. The token names this agent to the
    gateway."""

    model_config = ENV

    MCP_GATEWAY_URL: str | None = None
    MCP_GATEWAY_TOKEN: SecretStr | None = None
    MCP_SEARCH_TOOL: str = "search_notes"


class Composed(BaseSettings):
    """Settings that hold other settings classes as fields, its layers: each layer reads its own
    variables (its default_factory builds it), this class's environment only its own plain
    fields, never a layer's name (SERVER, CACHE...: pydantic-settings would parse it as the
    layer's JSON).

    Built from flat names, as the environment spells them (`Settings(REDIS_URL=url)`), each name
    goes to the layer that reads that variable (`cache`), which reads the rest from the
    environment; a name of the class's own comes first, then the layers in their order. A name
    nothing reads is an error."""

    model_config = ENV

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _PlainFieldsOnly(settings_cls)

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


class _PlainFieldsOnly(EnvSettingsSource):
    """The environment, for the fields that are not a layer."""

    def get_field_value(self, field: FieldInfo, field_name: str):
        if _layer(field) is not None:
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
    """The service's settings: lesson 02's core, the agent's own (AgentSettings), and each later
    layer's settings class as a field, read from its own variables: `settings.cache.REDIS_URL`,
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
