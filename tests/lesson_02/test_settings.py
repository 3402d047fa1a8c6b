"""research_agent/settings.py: the service's settings hold each layer's settings class as a field,
each read from its own variables, and are built from flat names as the environment spells them."""

import pytest
from pydantic import ValidationError

from research_agent.settings import (
    AccessSettings,
    CacheSettings,
    McpSettings,
    SandboxSettings,
    ServerSettings,
    Settings,
    ShutdownSettings,
    TracingSettings,
    variables,
)

LAYERS = {
    "server": ServerSettings,
    "cache": CacheSettings,
    "access": AccessSettings,
    "shutdown": ShutdownSettings,
    "sandbox": SandboxSettings,
    "mcp": McpSettings,
    "tracing": TracingSettings,
}


def test_each_layer_is_a_field_of_its_own_class():
    for name, layer in LAYERS.items():
        assert Settings.model_fields[name].annotation is layer
    own = set(Settings.model_fields) - set(LAYERS)
    assert {"MODEL_NAME", "OFFLINE_TOKEN_DELAY_MS", "SEARCH_BACKEND"} <= own
    assert not own & set(variables(CacheSettings)), "a layer's variable is the core's too"


def test_each_layer_reads_its_own_variables(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")
    monkeypatch.setenv("RATE_LIMIT", "5/minute")
    monkeypatch.setenv("SANDBOX_ENABLED", "true")
    monkeypatch.setenv("SANDBOX_POOL_SIZE", "1")
    monkeypatch.setenv("MCP_SEARCH_TOOL", "search_docs")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("MODEL_NAME", "gpt-4o")
    settings = Settings()
    assert settings.cache.REDIS_URL == "redis://cache:6379/0"
    assert settings.access.RATE_LIMIT == "5/minute" and settings.access.rate_limit_enabled
    assert settings.sandbox.enabled and settings.sandbox.pool_size == 1
    assert settings.mcp.MCP_SEARCH_TOOL == "search_docs"
    assert settings.tracing.otlp_protocol == "grpc"
    assert settings.MODEL_NAME == "gpt-4o"


@pytest.mark.parametrize("name", [*LAYERS, *(name.upper() for name in LAYERS)])
def test_a_variable_named_like_a_layer_is_never_read_as_the_layers_json(monkeypatch, name):
    """pydantic-settings would parse SERVER (or server) as JSON for a nested model: garbage
    would stop the service, and JSON would set a layer behind its own variables' back."""
    monkeypatch.setenv(name, '{"PORT": 1, "REDIS_URL": "redis://json", "enabled": true}')
    settings = Settings()
    assert settings.server.PORT == 8000 and settings.cache.REDIS_URL is None
    assert not settings.sandbox.enabled
    monkeypatch.setenv(name, "not json")
    assert Settings().server == ServerSettings()


def test_flat_names_go_to_the_layer_that_reads_them(monkeypatch):
    monkeypatch.setenv("CACHE_TTL_SECONDS", "60")
    settings = Settings(
        OFFLINE_TOKEN_DELAY_MS=0,
        REDIS_URL="redis://flat",
        RATE_LIMIT="off",
        SANDBOX_ENABLED=True,
        SANDBOX_TIMEOUT_SECONDS=3,
        OTEL_SDK_DISABLED=True,
    )
    assert settings.OFFLINE_TOKEN_DELAY_MS == 0
    # The layer still reads the rest of its variables from the environment.
    assert settings.cache == CacheSettings(REDIS_URL="redis://flat", CACHE_TTL_SECONDS=60)
    assert not settings.access.rate_limit_enabled
    assert settings.sandbox.enabled and settings.sandbox.timeout_seconds == 3
    assert settings.tracing.OTEL_SDK_DISABLED
    # A layer given whole, or in part as a dict that the flat names add to.
    cache = CacheSettings(CACHE_SCOPE="shared")
    assert Settings(cache=cache).cache is cache
    given = Settings(cache={"CACHE_SCOPE": "shared"}, REDIS_URL="redis://flat").cache
    assert (given.CACHE_SCOPE, given.REDIS_URL) == ("shared", "redis://flat")


def test_a_name_nothing_reads_is_an_error_and_so_is_a_layer_given_twice():
    with pytest.raises(ValidationError, match="REDIS_URLS"):
        Settings(REDIS_URLS="redis://typo")
    with pytest.raises(ValidationError, match="SANDBOX_MEMORY"):
        Settings(SANDBOX_MEMORY="1g")  # not a variable the research agent reads
    with pytest.raises(ValidationError, match="cache is given whole"):
        Settings(cache=CacheSettings(), REDIS_URL="redis://flat")


def test_a_layers_check_still_stops_the_service():
    with pytest.raises(ValidationError, match="parse rate limit"):
        Settings(RATE_LIMIT="thirty a minute")
    with pytest.raises(ValidationError, match="pool_size"):
        Settings(SANDBOX_POOL_SIZE=99)


def test_variables_walks_the_layers():
    names = variables()
    assert len(names) == len(set(names))
    for layer in (ServerSettings, CacheSettings, AccessSettings, McpSettings, TracingSettings):
        assert set(layer.model_fields) <= set(names)
    sandbox = {f"SANDBOX_{name.upper()}" for name in SandboxSettings.settable}
    assert sandbox <= set(names) and "SANDBOX_ENABLED" in sandbox
    assert not set(LAYERS) & set(names) and not {n.upper() for n in LAYERS} & set(names)
