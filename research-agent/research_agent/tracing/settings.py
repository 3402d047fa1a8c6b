"""Lesson 09's settings: the OTEL_* variables the services decide on. Light (pydantic only), so
lessons 05, 07 and 08 read them without loading OpenTelemetry."""

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class TracingSettings(BaseSettings):
    """The OTEL_* variables the services decide on (research_agent/tracing/otel.py, lesson 09):
    whether traces are set up at all, over which protocol, and whether prompt and answer text go
    into spans (a privacy choice). The OpenTelemetry SDK reads the others itself (service name,
    sampler, batch sizes, headers). Its own class so that lesson 07's services, which have their own
    settings, read the same variables the same way."""

    model_config = SettingsConfigDict(env_ignore_empty=True)

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
