"""Where a heartbeat receiver learns the incarnation each node's member
record names (vigil.net.admit: its packets then have a budget a blind flood
cannot drain, tests/unit/test_heartbeat_admission.py): an agent from every
snapshot its decision loop reads, a router from every member record it
applies. In-process, on the in-memory store."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.integration.routerharness import CLUSTER, router_front
from vigil.agent.daemon import Agent
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.heartbeats import member_record
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

KEYS = shared_keys("n1", "n2")


async def test_an_agent_takes_each_peers_incarnation_from_its_member_record(tmp_path):
    store = MemoryStore()
    store.start()
    api, hb, peer = free_ports(3)
    agent = Agent(parse_config({
        "cluster": "hints", "node": "n1", "data_dir": str(tmp_path), "etcd": {"endpoints": ["http://127.0.0.1:1"]},
        "api": {"port": api}, "heartbeat": {**KEYS["n1"], "port": hb,
                                            "peers": [{"name": "n2", "addresses": ["127.0.0.1"], "port": peer}]},
        "timing": {"loop_interval": 0.5}}), store=store)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    expected = agent.heartbeats.receiver.expected
    try:
        for incarnation in (1_700_000_000_000_001, 1_700_000_000_000_002):  # n2 starts, then restarts
            await store.put(Keys("hints").member("n2"),
                            json.dumps(member_record("http://127.0.0.1:9", incarnation=incarnation)))
            await wait_until(lambda: expected.get("n2") == incarnation, 10, f"n2's incarnation {incarnation}")
    finally:
        stop.set()
        await task
        await store.close()


async def test_a_router_takes_each_nodes_incarnation_from_its_member_record():
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({})
    app = web.Application()
    app.add_routes([web.get("/", ok)])
    async with router_front({"n1": app}) as f:
        url = f.router.table.backends["n1"].url
        await f.store.put(Keys(CLUSTER).member("n1"), json.dumps(member_record(url, incarnation=42)))
        await wait_until(lambda: f.router.membership.receiver.expected.get("n1") == 42, 10, "n1's incarnation")
