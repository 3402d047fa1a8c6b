"""Every setting of the service, read from environment variables in one class, `Settings`.

Lesson 02's core reads the agent's own (research_agent/schemas.py, AgentSettings). Each later layer
adds its group here, named after the module that reads it; `Settings` is all of them together, the
one class the service (research_agent/app.py) reads.
"""

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from limits import parse as parse_limit
from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .schemas import AgentSettings

ENV = SettingsConfigDict(env_ignore_empty=True)  # VAR= (as in .env.example) means the default


class TracingSettings(BaseSettings):
    """The OTEL_* variables the services decide on (research_agent/tracing.py, lesson 09): whether
    traces are set up at all, over which protocol, and whether prompt and answer text go into spans
    (a privacy choice). The OpenTelemetry SDK reads the others itself (service name, sampler, batch
    sizes, headers). Its own class so that lesson 07's services, which have their own settings, read
    the same variables the same way."""

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
        (research_agent/tracing.py)."""
        endpoint = self.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or self.OTEL_EXPORTER_OTLP_ENDPOINT
        return bool(endpoint) and not self.OTEL_SDK_DISABLED

    @property
    def otlp_protocol(self) -> str:
        return self.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or self.OTEL_EXPORTER_OTLP_PROTOCOL


class ServerSettings(BaseSettings):
    """Where it listens and how it logs (main.py, research_agent/telemetry.py), and the body limit
    (research_agent/middleware.py)."""

    model_config = ENV

    HOST: str = "0.0.0.0"
    PORT: int = 8000
    LOG_LEVEL: str = "INFO"
    MAX_BODY_BYTES: int = 16_384


class CacheSettings(BaseSettings):
    """The answer cache (research_agent/cache.py; docs/02, section 7)."""

    model_config = ENV

    REDIS_URL: str | None = None  # the cache's, and the limits' counts (quotas.py)
    CACHE_TTL_SECONDS: int = 3600
    # Whose answers a request may be served from: "caller" its own caller's only, so a cached
    # answer tells nobody what another caller asked; "shared" everyone's, more hits for callers
    # who trust one another (one team, one front end).
    CACHE_SCOPE: Literal["caller", "shared"] = "caller"
    CACHE_BREAKER_SECONDS: float = 10.0


class AccessSettings(BaseSettings):
    """Who may call /v1 and how much (research_agent/auth.py, research_agent/quotas.py; docs/02,
    section 8). Keys are secrets: never in an image, only in the environment or a mounted file."""

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


class SandboxSettings(BaseSettings):
    """run_python in a throwaway container (research_agent/python_tool.py, lesson 04). Off: it
    needs the Docker API, which is root on the host; see docs/04-sandboxed-tools.md before turning
    it on."""

    model_config = ENV

    SANDBOX_ENABLED: bool = False
    SANDBOX_IMAGE: str = "agent-sandbox:python"
    SANDBOX_RUNTIME: str | None = None  # runc; "runsc": gVisor, when the Docker daemon offers it
    SANDBOX_TIMEOUT_SECONDS: float = 10.0
    SANDBOX_POOL_SIZE: int = 0  # containers started ahead; see docs/04, "What it costs"
    # "allowlist": run_python reaches SANDBOX_ALLOWED_HOSTS through an egress proxy that adds
    # SANDBOX_CREDENTIALS' headers (docs/04, "The network as a capability"); "none": no network.
    SANDBOX_EGRESS: Literal["none", "allowlist"] = "none"
    SANDBOX_ALLOWED_HOSTS: str = ""
    SANDBOX_CREDENTIALS: str = ""


class McpSettings(BaseSettings):
    """Lesson 08: the search tool comes from this MCP gateway (research_agent/mcp_tools.py)
    instead of running in this process; unset, nothing changes. The token names this agent to the
    gateway."""

    model_config = ENV

    MCP_GATEWAY_URL: str | None = None
    MCP_GATEWAY_TOKEN: SecretStr | None = None
    MCP_SEARCH_TOOL: str = "search_notes"


class Settings(
    AgentSettings,
    ServerSettings,
    CacheSettings,
    AccessSettings,
    ShutdownSettings,
    SandboxSettings,
    McpSettings,
    TracingSettings,
):
    """The service's settings: the agent's and every layer's."""

    model_config = ENV


@lru_cache
def get_settings() -> Settings:
    return Settings()
