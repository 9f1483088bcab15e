"""Issue 9 #1, in-process on the in-memory store: a malformed member record
stops neither an agent's decision loop nor the router's membership."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp import web

from vigil.agent.daemon import Agent
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.router.config import parse_router_config
from vigil.router.proxy import Router
from vigil.store.events import read_events
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.wait import wait_until
from vigil.testing.keys import shared_keys

KEYS = shared_keys('n1', 'n2')


async def test_agent_keeps_deciding_past_a_malformed_peer_record(tmp_path):
    api_port, hb_port, peer_port = free_ports(3)
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    await store.put(keys.member("n2"), json.dumps({"name": "n2", "priority": "high"}))
    cfg = parse_config({"cluster": "bad", "node": "n1", "data_dir": str(tmp_path),
                        "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "api": {"port": api_port},
                        "heartbeat": {**KEYS["n1"], "port": hb_port,
                                      "peers": [{"name": "n2", "addresses": ["127.0.0.1"],
                                                 "port": peer_port}]},
                        "timing": {"lease_ttl": 2, "keepalive_interval": 0.5, "demote_after": 1.6,
                                   "etcd_timeout": 0.5, "loop_interval": 0.5}})
    agent = Agent(cfg, store=store)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        await wait_until(agent.is_leader, 15, "n1 to lead despite n2's bad record")
        assert agent.healthy and agent.reconciler.failing is None
        await agent.events.flush()
        bad = [e for e in await read_events(store, keys) if e["kind"] == "bad_record"]
        assert bad and "priority 'high' is not an integer" in bad[0]["cause"]
        assert bad[0]["key"] == keys.member("n2")
    finally:
        stop.set()
        await task
        await store.close()


async def test_router_routes_around_a_malformed_record_and_takes_the_node_back_when_fixed():
    backend_port, router_port, hb_port = free_ports(3)

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"data": []})
    app = web.Application()
    app.add_routes([web.post("/v1/embeddings", ok)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", backend_port).start()
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    good = {"inference": {"url": f"http://127.0.0.1:{backend_port}", "ready": True}}
    await store.put(keys.member("n1"), json.dumps(good))
    await store.put(keys.member("n2"), json.dumps({"inference": "x"}))
    metadata = {"inference": {"url": "http://169.254.169.254:80", "ready": True}}
    await store.put(keys.member("n3"), json.dumps(metadata))  # a record aiming the router at cloud metadata
    router = Router(parse_router_config({"cluster": "bad", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                                         "listen": {"port": router_port},
                                         "heartbeat": {"port": hb_port, **KEYS["ring"]}}), store)
    await router.start()
    await router.listen("127.0.0.1", router_port)
    try:
        await wait_until(lambda: router.table.choose(0.0) is not None, 5, "n1 learnt")
        assert keys.member("n2") in router.membership.bad_records
        assert "link-local" in router.membership.bad_records[keys.member("n3")]
        async with aiohttp.ClientSession() as http:
            for _ in range(5):
                async with http.post(f"http://127.0.0.1:{router_port}/v1/embeddings", json={}) as r:
                    assert r.status == 200 and r.headers["X-Vigil-Node"] == "n1"
        await store.put(keys.member("n2"), json.dumps(good))
        await wait_until(lambda: len(router.table.eligible(0.0)) == 2, 5, "n2 back once its record is whole")
        assert set(router.membership.bad_records) == {keys.member("n3")} and router.membership.failures == 0
    finally:
        await router.stop()
        await runner.cleanup()
        await store.close()


async def test_status_names_a_malformed_record_instead_of_a_traceback():
    from vigil.cli.status_view import gather_status, render_table
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    await store.put(keys.member("n2"), json.dumps({"name": "n2", "priority": "high"}))
    try:
        doc = await gather_status(store, keys)
    finally:
        await store.close()
    assert doc["bad_records"] == {keys.member("n2"): "priority 'high' is not an integer from 0 to 1000"}
    assert f"ignored malformed record {keys.member('n2')}: priority 'high'" in render_table(doc)
