"""Fencing tokens end to end on a real actuator: a pymodbus TCP server stands
in for a PLC; its holding register is written only through the guarded
gateway, and a deposed leader's write never lands, even across a restart of
the gateway."""

from __future__ import annotations

import json

import aiohttp
from aiohttp import web

from vigil.fencing import TokenGuard
from vigil.fencing.actuator import ActuatorGateway, ModbusPlc
from vigil.procs import free_ports


async def start_plc(port: int):
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    dev = SimDevice(id=1, simdata=[SimData(0, values=[0] * 10, datatype=DataType.REGISTERS)])
    server = ModbusTcpServer(dev, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    return server


async def start_gateway(plc_port: int, http_port: int, tmp_path):
    plc = ModbusPlc("127.0.0.1", plc_port)
    gw = ActuatorGateway(plc, TokenGuard(tmp_path / "highest-token"), tmp_path / "writes.jsonl")
    runner = web.AppRunner(gw.app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_port).start()
    return runner, plc


async def test_stale_token_never_reaches_the_plc(tmp_path):
    plc_port, http_port = free_ports(2)
    server = await start_plc(plc_port)
    runner, plc = await start_gateway(plc_port, http_port, tmp_path)
    url = f"http://127.0.0.1:{http_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def write(value, token):
                async with http.post(url + "/write", json={"register": 3, "value": value, "token": token}) as r:
                    return r.status, await r.json()
            assert (await write(100, 5))[0] == 200
            assert (await write(200, 7))[0] == 200, "a new leader takes over with a higher token"
            status, body = await write(666, 5)
            assert status == 409 and body["highest"] == 7
            async with http.get(url + "/read", params={"register": "3"}) as r:
                assert (await r.json())["value"] == 200, "the deposed leader's value never landed"
            assert (await write(1, 0))[0] == 400
            async with http.post(url + "/write", data=b"nonsense") as r:
                assert r.status == 400
        await runner.cleanup()
        plc.close()
        # The gateway restarts: its guard still refuses the old token.
        runner, plc = await start_gateway(plc_port, http_port, tmp_path)
        async with aiohttp.ClientSession() as http:
            async with http.post(url + "/write", json={"register": 3, "value": 666, "token": 6}) as r:
                assert r.status == 409
        history = [json.loads(x) for x in (tmp_path / "writes.jsonl").read_text().splitlines()]
        accepted = [h["token"] for h in history if h["accepted"]]
        assert accepted == sorted(accepted) == [5, 7]
        assert [h["token"] for h in history if not h["accepted"]] == [5, 6]
    finally:
        await runner.cleanup()
        plc.close()
        await server.shutdown()
