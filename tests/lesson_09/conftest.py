"""Fixtures for lesson 09's tests: an in-memory span exporter installed as the process's provider
for one test, and a local OTLP collector (HTTP or gRPC) that keeps what it is sent."""

import pytest
from app.api import create_app
from app.config import Settings
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from tests.support.agent import make_settings
from tests.support.otlp import OtlpCollector


def reset_tracing() -> None:
    """Forget the process's tracer provider and undo the library instrumentations (what
    OpenTelemetry's own test utilities do), so the next test starts with tracing off."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (HTTPXClientInstrumentor(), RedisInstrumentor()):
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    for name in ("OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spans():
    """The spans finished during the test, kept in memory (tracing on, nothing sent anywhere)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reset_tracing()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    reset_tracing()


@pytest.fixture
def traced_client(spans):
    """traced_client(**settings) -> a TestClient of an app built while tracing is on."""
    clients = []

    def open_client(**overrides):
        client = TestClient(create_app(make_settings(**overrides)), raise_server_exceptions=False)
        clients.append(client.__enter__())
        return client

    yield open_client
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def collector():
    with OtlpCollector("http/protobuf") as c:
        yield c


@pytest.fixture
def grpc_collector():
    with OtlpCollector("grpc") as c:
        yield c


@pytest.fixture
def start_agent(server_process):
    """start_agent(**settings) -> `python main.py`, as the images run it, ready on a free port."""
    import sys

    from tests.support.lessons import AGENT_DIR

    def start(**settings):
        return server_process(
            [sys.executable, "main.py"], cwd=AGENT_DIR, ready_path="/ready", **settings
        )

    return start
