"""Payload ownership: a long generation on a node is registered in the
store under that node's lease, with its progress, while it runs; it goes
when the generation ends, and with the lease when the node dies. The agent
in-process on the in-memory store (held to etcd by the conformance suite),
its model server a real HTTP server running the reference model."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
from aiohttp import web

from vigil.agent.daemon import Agent
from vigil.cli.cluster_cmd import read_payloads
from vigil.cluster_status import gather_status
from vigil.cli.status_view import render_table
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.serve.generate import ReferenceLM
from vigil.serve.model import NoEmbeddings
from vigil.serve.server import ModelServer
from vigil.store.keys import Keys
from vigil.testing import MemoryStore
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

KEYS = shared_keys("a")


@contextlib.asynccontextmanager
async def node_with_a_generator(tmp_path):
    """An agent on the in-memory store watching a real model server (reference model): (agent, store, url)."""
    api_port, hb_port, srv_port = free_ports(3)
    server = ModelServer(NoEmbeddings(), "a", generator=ReferenceLM(token_delay=0.02, ends=False), slots=4)
    await server.load()
    runner = web.AppRunner(server.app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", srv_port).start()
    cfg = parse_config({"cluster": "p", "node": "a", "data_dir": str(tmp_path),
                        "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "api": {"port": api_port},
                        "heartbeat": {**KEYS["a"], "port": hb_port},
                        "inference": {"url": f"http://127.0.0.1:{srv_port}", "load_interval": 0.1,
                                      "canary_path": "/v2/health/ready", "canary_body": ""}})
    store = MemoryStore()
    store.start()
    agent = Agent(cfg, store=store)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        await wait_until(lambda: agent.session_ok(), 10, "the agent's session")
        yield agent, store, f"http://127.0.0.1:{srv_port}"
    finally:
        stop.set()
        await task
        await runner.cleanup()
        await store.close()


BODY = {"model": ReferenceLM.model_id, "prompt": "a long one", "max_tokens": 2000, "stream": True}


async def test_a_long_generation_is_registered_under_the_nodes_lease(tmp_path):
    keys = Keys("p")
    async with node_with_a_generator(tmp_path) as (agent, store, url):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/completions", json=BODY) as r:
                first = await r.content.readuntil(b"\n\n")
                stream_id = json.loads(first[6:])["id"]
                key = keys.payload(stream_id)
                kv = await wait_until(lambda: store._kv.get(key), 10, "the payload record")
                rec = json.loads(kv.value)
                assert (rec["node"], rec["model"], rec["kind"]) == ("a", ReferenceLM.model_id, "stream")
                assert kv.lease == agent.registration.session.lease_id, "it lives and dies with the node's lease"
                await wait_until(lambda: json.loads(store._kv[key].value)["progress"] > rec["progress"], 10,
                                 "progress rewritten")
                listed = await read_payloads(store, keys)
                assert [x["id"] for x in listed] == [stream_id]
                doc = await gather_status(store, keys)
                assert [(m["name"], m["payloads"]) for m in doc["members"]] == [("a", 1)]
                assert "long-running work: a 1 (vigil payloads)" in render_table(doc)
                r.close()  # the client hangs up: the generation ends
        await wait_until(lambda: key not in store._kv, 10, "the record removed when the generation ended")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/completions", json=BODY) as r:
                await wait_until(lambda: any(k.startswith(keys.payloads) for k in store._kv), 10, "a new record")
                await store.revoke(agent.registration.session.lease_id)  # the node's lease ends (its node died)
                assert not any(k.startswith(keys.payloads) for k in store._kv), "gone with the lease"
                r.close()


async def test_a_record_another_node_holds_is_neither_overwritten_nor_removed(tmp_path):
    """A stream continued on node b keeps its id; node a, where it started (paused,
    then running again), must not take b's record over or delete it."""
    keys = Keys("p")
    async with node_with_a_generator(tmp_path) as (agent, store, url):
        other = await store.grant(30)
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{url}/v1/completions", json=BODY) as r:
                stream_id = json.loads((await r.content.readuntil(b"\n\n"))[6:])["id"]
                key = keys.payload(stream_id)
                theirs = json.dumps({"id": stream_id, "node": "b", "model": ReferenceLM.model_id,
                                     "kind": "stream", "started": 1.0, "progress": 40})
                await store.put(key, theirs, other.id)  # before a's agent registers it (min age 1 s)
                await wait_until(lambda: agent.payloads.book.create_revision(stream_id), 10,
                                 "a's agent to try to register the stream")
                assert store._kv[key].value == theirs and store._kv[key].lease == other.id
                r.close()
        await wait_until(lambda: agent.payloads.book.create_revision(stream_id) == 0, 10,
                         "a's agent to forget the ended stream")
        assert store._kv[key].value == theirs, "b's record is still there"
