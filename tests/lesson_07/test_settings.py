"""Lesson 07's settings: one pydantic-settings class per service, read when created, never at
import, the way every other service of the course reads its configuration."""

import sys

import pydantic
import pytest
from pydantic_settings import BaseSettings


@pytest.fixture
def contract(agents, monkeypatch):
    """The contract module the agents file imports (code/ is on its path once it is loaded), with
    the gateway's one required setting, its TOKEN_KEY, in the environment."""
    monkeypatch.setenv("TOKEN_KEY", "k" * 32)
    return sys.modules[agents.AgentSettings.__module__]


def test_the_gateway_has_no_default_token_key(contract, monkeypatch):
    monkeypatch.delenv("TOKEN_KEY")
    with pytest.raises(pydantic.ValidationError, match="token_key"):
        contract.GatewaySettings()


def test_each_service_has_its_own_class_on_the_shared_one(contract):
    agent, gateway = contract.AgentSettings(), contract.GatewaySettings()
    assert isinstance(agent, contract.Settings) and isinstance(gateway, contract.Settings)
    assert {"host", "port", "max_backlog", "asks_per_minute"} <= set(type(gateway).model_fields)
    assert not {"host", "port", "max_backlog"} & set(type(agent).model_fields)
    assert {"model_name", "visibility_timeout_ms", "trace_all"} <= set(type(agent).model_fields)
    assert not {"model_name", "trace_all"} & set(type(gateway).model_fields)


def test_the_environment_is_read_when_a_settings_object_is_made(contract, monkeypatch):
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "9123")
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    gateway = contract.GatewaySettings()
    assert (gateway.host, gateway.port, gateway.redis_url) == (
        "0.0.0.0",
        9123,
        "redis://redis:6379/0",
    )
    monkeypatch.setenv("PORT", "not-a-port")
    with pytest.raises(pydantic.ValidationError):
        contract.GatewaySettings()


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("", False), ("1", True)])
def test_trace_all_is_a_setting_and_empty_is_its_default(contract, monkeypatch, value, expected):
    # `make lesson-07-trace` passes TRACE_ALL=$(TRACE_ALL): empty unless the learner set it.
    if value is None:
        monkeypatch.delenv("TRACE_ALL", raising=False)
    else:
        monkeypatch.setenv("TRACE_ALL", value)
    assert contract.AgentSettings().trace_all is expected


def test_no_lesson_07_module_makes_settings_at_import(agents, contract):
    for module in (agents, contract):
        made = [name for name, value in vars(module).items() if isinstance(value, BaseSettings)]
        assert made == [], f"{module.__name__} reads the environment at import: {made}"
