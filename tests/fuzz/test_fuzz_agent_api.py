"""Fuzz target: requests to a running agent's HTTP API (any method, path,
header and body, and raw bytes). Every one gets an answer that is not a 500
(503 is the health endpoints' "no"), nothing hangs, and the agent's
leadership and health are what they were."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.conftest import EXAMPLES, exchange, http_requests, status_of
from vigil.agent import Agent
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.testing import MemoryStore
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until


@pytest.fixture(scope="module")
def agent(loop_thread, tmp_path_factory):
    api_port, hb_port = free_ports(2)
    cfg = parse_config({"cluster": "fuzz", "node": "n1", "data_dir": str(tmp_path_factory.mktemp("agent")),
                        "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "api": {"port": api_port},
                        "heartbeat": {**shared_keys("n1")["n1"], "port": hb_port},
                        "timing": {"lease_ttl": 2, "keepalive_interval": 0.5, "demote_after": 1.6,
                                   "etcd_timeout": 0.5, "loop_interval": 0.5}})
    stop = asyncio.Event()

    async def up():
        store = MemoryStore()
        store.start()
        a = Agent(cfg, store=store)
        task = asyncio.get_running_loop().create_task(a.run(stop))
        await wait_until(a.is_leader, 15, "the agent to lead")
        return a, task, store
    a, task, store = loop_thread.run(up())

    async def down():
        stop.set()
        await task
        await store.close()
    try:
        yield a, api_port
    finally:
        loop_thread.run(down())


REQUESTS = http_requests(["/health", "/leader", "/standby", "/ready", "/status", "/metrics", "/"],
                         ["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"])


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(REQUESTS)
def test_no_request_breaks_the_agent_api(agent, request_):
    data, complete = request_
    a, port = agent
    token = a.role.token
    status = status_of(exchange(port, data, half_close=not complete))
    assert status is None or status < 500 or status == 503, (status, data)
    assert a.is_leader() and a.role.token == token and a.healthy, "state unchanged by garbage"


@pytest.mark.parametrize("path", ["/health", "/no-such-path"])
def test_a_non_utf8_expect_header_gets_417_not_500(agent, path):
    """Found by the fuzz target: aiohttp's own Expect handler answered 500."""
    _, port = agent
    answer = exchange(port, f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n".encode()
                      + b"Expect: \x80\r\n\r\n", half_close=False)
    assert status_of(answer) == 417 and b"\x80" not in answer
