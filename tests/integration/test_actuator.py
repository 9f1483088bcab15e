"""Fencing tokens end to end on a real actuator: a pymodbus TCP server stands
in for a PLC; its holding register is written only through the guarded
gateway, and a deposed leader's write never lands, even across a restart of
the gateway. Only requests signed by the node etcd names as leader, with
that leadership's token, get through (issue 9 #4), and only when signed for
this gateway (issue 22 B-L4); a stranger's requests are counted, never
written to disk, and the history is bounded (B12)."""

from __future__ import annotations

import json
import logging
import time

import aiohttp
from aiohttp import web

from vigil.errors import StoreUnavailable
from vigil.resources.guard import TokenGuard
from vigil.resources.actuator import ActuatorGateway, ModbusPlc
from vigil.resources.signed import RequestVerifier, gateway_name, sign_request
from vigil.identity import SigningKeys, generate, load_ring, load_signing_keys
from vigil.procs import free_ports
from vigil.testing.keys import heartbeat_keys


class FakeEtcd:
    """The leader key as the gateway reads it: (node, token), None, or unreachable."""

    def __init__(self):
        self.leader: tuple[str, int] | None = None
        self.down = False

    async def leader_of(self):
        if self.down:
            raise StoreUnavailable("no etcd endpoint answered")
        return self.leader


async def start_plc(port: int):
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    dev = SimDevice(id=1, simdata=[SimData(0, values=[0] * 10, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(dev, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


async def start_gateway(plc_port: int, http_port: int, tmp_path, etcd: FakeEtcd, **kw):
    plc = ModbusPlc("127.0.0.1", plc_port)
    ring = load_ring(tmp_path / "keys" / "cluster.keyring", "ring")
    gw = ActuatorGateway(plc, TokenGuard(tmp_path / "highest-token"), tmp_path / "writes.jsonl",
                         RequestVerifier(ring, f"127.0.0.1:{http_port}"), etcd.leader_of, **kw)
    runner = web.AppRunner(gw.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    return runner, plc


class Client:
    def __init__(self, http: aiohttp.ClientSession, url: str, tmp_path):
        self.http, self.url, self.name = http, url, gateway_name(url)
        self.keys = {n: load_signing_keys(tmp_path / "keys" / f"{n}.key", n) for n in ("n1", "n2")}

    def sign(self, signer: SigningKeys, body: bytes, at: float | None = None) -> dict[str, str]:
        return sign_request(signer, self.name, "POST", "/write", body, time.time() if at is None else at)

    async def post(self, body: bytes, signer: SigningKeys | None, headers: dict | None = None):
        h = self.sign(signer, body) if signer else {}
        async with self.http.post(self.url + "/write", data=body, headers={**h, **(headers or {})}) as r:
            return r.status, await r.json()

    async def write(self, value: int, token: int, node: str = "n1"):
        body = json.dumps({"register": 3, "value": value, "token": token}).encode()
        return await self.post(body, self.keys[node])


async def test_stale_token_never_reaches_the_plc(tmp_path):
    heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    etcd = FakeEtcd()
    plc_port, http_port = free_ports(2)
    server = await start_plc(plc_port)
    runner, plc = await start_gateway(plc_port, http_port, tmp_path, etcd)
    url = f"http://127.0.0.1:{http_port}"
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(http, url, tmp_path)
            etcd.leader = ("n1", 5)
            assert (await c.write(100, 5))[0] == 200
            etcd.leader = ("n2", 7)
            assert (await c.write(200, 7, "n2"))[0] == 200, "a new leader takes over with a higher token"
            status, body = await c.write(666, 5)
            assert status == 409 and body["highest"] == 7
            async with http.get(url + "/read", params={"register": "3"}) as r:
                assert (await r.json())["value"] == 200, "the deposed leader's value never landed"
            assert (await c.write(1, 0))[0] == 400
            assert (await c.post(b"nonsense", c.keys["n1"]))[0] == 400
        await runner.cleanup()
        plc.close()
        # The gateway restarts: its guard still refuses the old token.
        runner, plc = await start_gateway(plc_port, http_port, tmp_path, etcd)
        async with aiohttp.ClientSession() as http:
            assert (await Client(http, url, tmp_path).write(666, 6))[0] == 409
        history = [json.loads(x) for x in (tmp_path / "writes.jsonl").read_text().splitlines()]
        accepted = [h["token"] for h in history if h["accepted"]]
        assert accepted == sorted(accepted) == [5, 7]
        assert [h["token"] for h in history if not h["accepted"]] == [5, 6]
        assert [h["node"] for h in history if h["accepted"]] == ["n1", "n2"]
    finally:
        await runner.cleanup()
        plc.close()
        await server.shutdown()


async def test_only_the_leader_etcd_names_may_write_with_its_token(tmp_path):
    """Issue 9 #4: an unsigned caller, a forged signature, a replay, another
    node, a token etcd never issued (2^63, which would lock every future
    leader out) and bad bodies are all refused with a 4xx; none reaches the
    PLC or moves the guard."""
    heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    etcd = FakeEtcd()
    etcd.leader = ("n1", 9)
    plc_port, http_port = free_ports(2)
    server = await start_plc(plc_port)
    runner, plc = await start_gateway(plc_port, http_port, tmp_path, etcd)
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(http, f"http://127.0.0.1:{http_port}", tmp_path)
            good = json.dumps({"register": 3, "value": 1, "token": 9}).encode()
            assert (await c.post(good, None))[0] == 401, "unsigned"
            impostor = SigningKeys("n1", 1, {1: generate()})
            status, body = await c.post(good, impostor)
            assert status == 401 and "signature does not match" in body["error"]
            status, body = await c.write(1, 9, node="n2")
            assert status == 403 and "n1 holds token 9" in body["error"], "n2 may not use n1's token"
            status, body = await c.write(1, 2**63)
            assert status == 403, "a token etcd never issued"
            for bad in (b"5", b"null", b"[]", b'"x"', b"\xff\xfe", b'{"register": 3}',
                        b"[" * 3000 + b"]" * 3000):  # nested past the parser: RecursionError
                status, body = await c.post(bad, c.keys["n1"])
                assert status == 400 and "bad write request" in body["error"], bad
            headers = c.sign(c.keys["n1"], good)
            assert (await c.post(good, None, headers))[0] == 200
            status, body = await c.post(good, None, headers)
            assert status == 401 and "replay" in body["error"]
            old = c.sign(c.keys["n1"], good, time.time() - 60)
            assert (await c.post(good, None, old))[0] == 401, "signed a minute ago"
            tampered = json.dumps({"register": 3, "value": 999, "token": 9}).encode()
            assert (await c.post(tampered, None, c.sign(c.keys["n1"], good)))[0] == 401
            etcd.leader, etcd.down = ("n2", 12), True
            status, body = await c.write(5, 12, node="n2")
            assert status == 503 and "cannot confirm token 12" in body["error"]
            assert (await c.write(6, 9))[0] == 200, "the leader accepted before keeps writing"
            etcd.down = False
            assert (await c.write(7, 12, node="n2"))[0] == 200
        assert TokenGuard(tmp_path / "highest-token").highest == 12, "2^63 was never persisted"
        history = [json.loads(x) for x in (tmp_path / "writes.jsonl").read_text().splitlines()]
        assert [(h["token"], h["value"]) for h in history if h["accepted"]] == [(9, 1), (9, 6), (12, 7)]
    finally:
        await runner.cleanup()
        plc.close()
        await server.shutdown()


async def test_a_command_signed_for_one_gateway_is_refused_by_another(tmp_path):
    """B-L4: two gateways trust one key ring; an on-path attacker who copies a command
    to the second within the skew window gets 401, and the second's PLC is untouched."""
    heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    etcd = FakeEtcd()
    etcd.leader = ("n1", 9)
    plc_a, plc_b, http_a, http_b = free_ports(4)
    servers = [await start_plc(plc_a), await start_plc(plc_b)]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keys").symlink_to(tmp_path / "keys")
    gateways = [await start_gateway(plc_a, http_a, tmp_path, etcd),
                await start_gateway(plc_b, http_b, tmp_path / "b", etcd)]
    try:
        async with aiohttp.ClientSession() as http:
            a = Client(http, f"http://127.0.0.1:{http_a}", tmp_path)
            b = Client(http, f"http://127.0.0.1:{http_b}", tmp_path)
            body = json.dumps({"register": 3, "value": 77, "token": 9}).encode()
            headers = a.sign(a.keys["n1"], body)
            status, answer = await b.post(body, None, headers)  # the copy, first: B never saw it
            assert status == 401 and f"another gateway than 127.0.0.1:{http_b}" in answer["error"], answer
            assert (await a.post(body, None, headers))[0] == 200, "the gateway it was signed for takes it"
            async with http.get(b.url + "/read", params={"register": "3"}) as r:
                assert (await r.json())["value"] == 0, "B's PLC untouched"
            assert (await b.write(5, 9))[0] == 200, "a command signed for B is taken by B"
    finally:
        for runner, plc in gateways:
            await runner.cleanup()
            plc.close()
        for server in servers:
            await server.shutdown()


async def test_strangers_requests_are_counted_not_written_and_the_history_is_bounded(tmp_path, caplog):
    """B12: 300 unsigned or wrongly signed writes leave the history untouched (one warning in
    the log, a count in /status); the signed writes' history is rotated past its bound."""
    heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    etcd = FakeEtcd()
    etcd.leader = ("n1", 9)
    plc_port, http_port = free_ports(2)
    server = await start_plc(plc_port)
    runner, plc = await start_gateway(plc_port, http_port, tmp_path, etcd, history_max_bytes=4096)
    history = tmp_path / "writes.jsonl"
    try:
        async with aiohttp.ClientSession() as http:
            c = Client(http, f"http://127.0.0.1:{http_port}", tmp_path)
            assert (await c.write(1, 9))[0] == 200
            size = history.stat().st_size
            impostor = SigningKeys("n1", 1, {1: generate()})
            body = json.dumps({"register": 3, "value": 666, "token": 9}).encode()
            with caplog.at_level(logging.WARNING, logger="vigil.resources.actuator"):
                for i in range(300):
                    assert (await c.post(body, impostor if i % 2 else None))[0] == 401
            assert history.stat().st_size == size, "nothing of the strangers' requests on disk"
            warned = [r for r in caplog.records if "refused a request for its signature" in r.getMessage()]
            assert len(warned) == 1, "at most one warning a minute"
            async with http.get(c.url + "/status") as r:
                assert (await r.json())["unauthorised"] == 300
            for v in range(200):  # ~120 bytes a line: past 4096 bytes several times over
                assert (await c.write(v, 9))[0] == 200
        rotated = tmp_path / "writes.jsonl.1"
        assert history.stat().st_size <= 4096 + 200 and rotated.stat().st_size <= 4096 + 200
        newest = [json.loads(x) for x in history.read_text().splitlines()]
        assert newest[-1]["value"] == 199 and all(h["accepted"] for h in newest), "the newest records kept"
    finally:
        await runner.cleanup()
        plc.close()
        await server.shutdown()
