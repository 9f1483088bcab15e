"""Fuzz target: requests to the router (methods, paths, headers, bodies, and
raw bytes) through its real HTTP/1.1 data plane to a real backend. No
request may crash a handler ("router error"), hang the router, or leave a
connection or an in-flight count behind; the router serves on afterwards."""

from __future__ import annotations

import contextlib
import urllib.request

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.conftest import EXAMPLES, exchange, http_requests, status_of
from tests.integration.test_router_deadlines import router_over
from tests.integration.test_router_http1 import echo_backend
from vigil.testing.wait import wait_until


@pytest.fixture(scope="module")
def router(loop_thread):
    stack = contextlib.AsyncExitStack()

    async def up():
        return await stack.enter_async_context(router_over({"n1": echo_backend()},
                                                           limits={"max_body": 4096}))
    rt, url = loop_thread.run(up())
    try:
        yield rt, int(url.rsplit(":", 1)[1])
    finally:
        loop_thread.run(stack.aclose())


REQUESTS = http_requests(["/v1/embeddings", "/v1/completions", "/_vigil/status", "/metrics", "/"],
                         ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(REQUESTS)
def test_no_request_breaks_the_router(router, request_):
    data, _ = request_
    _, port = router
    answer = exchange(port, data)  # our data plane answers a half-closed client too
    status = status_of(answer)
    assert b"router error" not in answer, data
    # Any answer the backend or the router means (4xx, 502/503/504), never a 500.
    assert status is None or status < 500 or status in (502, 503, 504), (status, data)


def test_the_router_serves_on_and_holds_nothing_afterwards(router, loop_thread):
    rt, port = router
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", data=b"{}", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    loop_thread.run(wait_until(lambda: rt.active == 0 and rt.front.held == 0 and not rt.clients, 10,
                               "every fuzzed connection and request to be gone"))
