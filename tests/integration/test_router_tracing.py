"""The router's request path traced with OpenTelemetry (vigil.router.tracing):
a real router in front of two real HTTP servers, one answering 503, the
spans caught by the SDK's in-memory exporter. A retried request is one
trace: the request span (status 200, a `retry` event), and under it an
attempt span per node, the failed one carrying the failure. Off by default;
on without the OTLP exporter installed, the configuration names the fix."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.routerharness import router_over
from tests.integration.test_router_http1 import echo_backend
from vigil.errors import ConfigError
from vigil.router.tracing import Tracing, parse_tracing, tracing_from


def unavailable() -> web.Application:
    async def busy(_: web.Request) -> web.Response:
        return web.Response(status=503, text="warming up")
    app = web.Application()
    app.add_routes([web.route("*", "/{tail:.*}", busy)])
    return app


async def test_a_retried_request_is_one_trace_with_an_attempt_per_node():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with router_over({"n1": unavailable(), "n2": echo_backend()}) as (router, url):
        assert router.tracing.tracer is None, "off unless configured"
        router.tracing = Tracing(provider.get_tracer("test"))
        async with aiohttp.ClientSession() as http:
            for _ in range(4):  # until one request met n1 first (the turn rotates between equals)
                async with http.post(url + "/v1/embeddings", json={"input": "x"}) as r:
                    assert r.status == 200
                    if r.headers["X-Vigil-Attempts"] == "2":
                        break
            else:
                pytest.fail("no request was retried")
    spans = exporter.get_finished_spans()
    root = next(s for s in reversed(spans) if s.name == "vigil.router.request")
    tries = sorted((s for s in spans if s.name == "vigil.router.attempt" and s.parent and
                    s.parent.span_id == root.context.span_id), key=lambda s: s.start_time)
    assert root.attributes["http.response.status_code"] == 200 and root.attributes["url.path"] == "/v1/embeddings"
    assert [s.attributes["node"] for s in tries] == ["n1", "n2"], [s.attributes for s in tries]
    failure = [e for e in tries[0].events if e.name == "exception"]
    assert failure and "503" in failure[0].attributes["exception.message"], tries[0].events
    assert not tries[1].events and tries[1].status.is_ok
    assert [e.name for e in root.events] == ["retry"] and root.events[0].attributes["after"] == "n1"


def test_the_tracing_section_is_checked_and_names_what_it_needs():
    assert parse_tracing(None) is None and tracing_from(None).tracer is None
    cfg = parse_tracing({"otlp_endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 0.1})
    assert cfg.sample_ratio == 0.1 and cfg.service_name == "vigil-router"
    for bad, field in (({"otlp_endpoint": "127.0.0.1:4318"}, "otlp_endpoint"),
                       ({"otlp_endpoint": "http://x", "sample_ratio": 2}, "sample_ratio"),
                       ({"otlp_endpoint": "http://x", "colour": "red"}, "colour")):
        with pytest.raises(ConfigError, match=field):
            parse_tracing(bad)
    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"vigil-ha\[otel\]"):
            tracing_from(cfg)
    else:
        assert tracing_from(cfg).tracer is not None
