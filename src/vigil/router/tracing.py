"""Traces of the router's request path (OpenTelemetry), off unless the
router's file has a `tracing:` section:

    tracing:
      otlp_endpoint: http://127.0.0.1:4318/v1/traces   # OTLP over HTTP (a collector, Jaeger, Tempo)
      service_name: vigil-router
      sample_ratio: 1.0                               # of requests traced (parent-based)

Spans: `vigil.router.request` (the root: method, path, status, or `streamed`),
inside it `vigil.router.admission` (the wait for a free slot: its outcome),
one `vigil.router.attempt` per try (the node, and the failure's kind or the
status), `vigil.router.resume` when a stream continues on another node;
a retry is an event on the request. Off, each hook costs an attribute test
and a shared no-op context; the OpenTelemetry packages are imported only
when tracing is on (`pip install 'vigil-ha[otel]'`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from vigil.errors import ConfigError
from vigil.fields import check_mapping

_OFF = contextlib.nullcontext()


@dataclass(frozen=True)
class TracingConfig:
    otlp_endpoint: str
    service_name: str = "vigil-router"
    sample_ratio: float = 1.0


def parse_tracing(v: Any) -> TracingConfig | None:
    if v is None:
        return None
    d = check_mapping(v, "tracing", {"otlp_endpoint", "service_name", "sample_ratio"})
    url = d.get("otlp_endpoint")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("tracing.otlp_endpoint", url, "an OTLP/HTTP URL, e.g. http://127.0.0.1:4318/v1/traces")
    name = d.get("service_name", "vigil-router")
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise ConfigError("tracing.service_name", name, "a name of 1..128 characters")
    ratio = d.get("sample_ratio", 1.0)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise ConfigError("tracing.sample_ratio", ratio, "a share of requests from 0 to 1")
    return TracingConfig(url, name, float(ratio))


class Tracing:
    """The router's spans: `span(name, **attributes)` is a context manager giving
    the span (None when tracing is off); `note(span, **attributes)` and
    `event(span, name)` accept None."""

    def __init__(self, tracer: Any = None, provider: Any = None):
        self.tracer, self.provider = tracer, provider

    def shutdown(self) -> None:
        """Export what is still batched (the router is stopping)."""
        if self.provider is not None:
            self.provider.shutdown()

    def span(self, name: str, **attributes: Any) -> Any:
        if self.tracer is None:
            return _OFF
        return self.tracer.start_as_current_span(name, attributes=attributes)

    def current(self) -> Any:
        """The span of the code running now (None when tracing is off)."""
        if self.tracer is None:
            return None
        from opentelemetry import trace

        return trace.get_current_span()

    @staticmethod
    def note(span: Any, **attributes: Any) -> None:
        if span is not None:
            for k, v in attributes.items():
                span.set_attribute(k.replace("__", "."), v)

    @staticmethod
    def event(span: Any, name: str, **attributes: Any) -> None:
        if span is not None:
            span.add_event(name, attributes)


def tracing_from(cfg: TracingConfig | None) -> Tracing:
    """Tracing for a router's configuration: off without one; else an OTLP/HTTP
    exporter behind a batch processor. Raises ConfigError without the packages."""
    if cfg is None:
        return Tracing()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError("tracing", cfg.otlp_endpoint, "needs the OpenTelemetry SDK and OTLP exporter: "
                          "pip install 'vigil-ha[otel]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=cfg.otlp_endpoint)))
    return Tracing(provider.get_tracer("vigil.router"), provider)
