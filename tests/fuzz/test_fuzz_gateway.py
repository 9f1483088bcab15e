"""Fuzz target: bodies (and signatures) sent to the actuator gateway. Every
one gets an answer below 500; the guard only ever holds a token etcd issued
to the signing node, and a write reaches the PLC only when it is signed by
the leader with the leader's token, for this gateway. A request refused for
its signature writes nothing to disk (it is only counted)."""

from __future__ import annotations

import json
import time

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.fuzz.conftest import EXAMPLES, exchange, status_of
from vigil.resources.guard import TokenGuard
from vigil.resources.actuator import ActuatorGateway
from vigil.resources.signed import RequestVerifier, sign_request
from vigil.identity import load_ring, load_signing_keys
from vigil.procs import free_ports
from vigil.testing.keys import heartbeat_keys

LEADER = ("n1", 9)
NAME = "gateway-a:8400"  # the gateway's name; commands signed for another are refused


class MemoryPlc:
    def __init__(self) -> None:
        self.registers: dict[int, int] = {}

    async def write(self, register: int, value: int) -> int:
        self.registers[register] = value
        return value

    async def read(self, register: int) -> int:
        return self.registers.get(register, 0)


@pytest.fixture(scope="module")
def gateway(loop_thread, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    heartbeat_keys(root / "keys", ["n1", "n2"])
    plc = MemoryPlc()

    async def leader_of():
        return LEADER
    gw = ActuatorGateway(plc, TokenGuard(root / "highest"), root / "writes.jsonl",
                         RequestVerifier(load_ring(root / "keys" / "cluster.keyring", "ring"), NAME,
                                         remember=1 << 16), leader_of)
    (port,) = free_ports(1)

    async def up():
        runner = web.AppRunner(gw.app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner
    runner = loop_thread.run(up())
    keys = {n: load_signing_keys(root / "keys" / f"{n}.key", n) for n in ("n1", "n2")}
    try:
        yield gw, plc, port, keys
    finally:
        loop_thread.run(runner.cleanup())


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids,
                                                                                max_size=4),
                    max_leaves=10)
FIELDS = st.fixed_dictionaries({}, optional={"register": JSON | st.integers(-5, 70000),
                                             "value": JSON | st.integers(-5, 70000),
                                             "token": JSON | st.sampled_from([0, 1, 8, 9, 10, 2**63, 2**64])})
BODIES = (FIELDS.map(lambda d: json.dumps(d).encode()) | JSON.map(lambda d: json.dumps(d).encode())
          | st.binary(max_size=200))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(BODIES, st.sampled_from([None, "n1", "n2"]), st.sampled_from([NAME, "gateway-b:8400"]))
def test_no_body_breaks_the_gateway_or_moves_the_guard(gateway, body, signer, signed_for):
    gw, plc, port, keys = gateway
    before, written = dict(plc.registers), _size(gw.history.path)
    headers = sign_request(keys[signer], signed_for, "POST", "/write", body, time.time()) if signer else {}
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    answer = exchange(port, (f"POST /write HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{head}"
                             f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                      .encode() + body, half_close=False)
    status = status_of(answer)
    assert status is not None and status < 500, (status, body, answer[-200:])
    assert gw.guard.highest in (0, LEADER[1]), "only the token etcd issued is ever persisted"
    if status == 200:
        doc = json.loads(body)
        assert signer == LEADER[0] and doc["token"] == LEADER[1] and signed_for == NAME
        assert plc.registers[doc["register"]] == doc["value"]
    else:
        assert plc.registers == before, "a refused write never reaches the PLC"
    if status in (400, 401):
        assert _size(gw.history.path) == written, "an unauthenticated request writes nothing to disk"


def _size(path) -> int:
    return path.stat().st_size if path.exists() else 0
