"""Issue 9 #1 and issue 22 #1 (review B1), in-process on the in-memory store:
a malformed record of any key family the agents read stops neither an
agent's decision loop nor the router's membership."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
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
from vigil.testing.heartbeats import HeartbeatSender, member_record
from vigil.testing.keys import shared_keys

KEYS = shared_keys('n1', 'n2')
HUGE = "1" + "0" * 400  # a JSON integer no float holds (review B1)


def one_node_config(tmp_path, api_port: int, hb_port: int, peer_port: int) -> dict:
    return {"cluster": "bad", "node": "n1", "data_dir": str(tmp_path),
            "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "api": {"port": api_port},
            "heartbeat": {**KEYS["n1"], "port": hb_port,
                          "peers": [{"name": "n2", "addresses": ["127.0.0.1"], "port": peer_port}]},
            "timing": {"lease_ttl": 2, "keepalive_interval": 0.5, "demote_after": 1.6,
                       "etcd_timeout": 0.5, "loop_interval": 0.5}}


@contextlib.asynccontextmanager
async def running_agent(tmp_path, store):
    agent = Agent(parse_config(one_node_config(tmp_path, *free_ports(3))), store=store)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(agent.run(stop))
    try:
        yield agent
    finally:
        stop.set()
        await task


# One hostile value per key family the agents decide on; each stopped every
# agent's cycle (members, held), held every node back for good (fencing), or
# went into a decision unchecked (the rest) on 7cf5bfd.
BAD = {
    "members": lambda k: (k.member("zz-not-a-node"), '{"started_at": ' + HUGE + "}"),
    "held": lambda k: (k.hold("n2"), '{"until": ' + HUGE + ', "why": "x"}'),
    "fencing": lambda k: (k.fence_marker("n2"), "[" * 100_000),
    "state": lambda k: (k.state("n2"), HUGE),
    "switchover": lambda k: (k.switchover, '{"to": ' + HUGE + "}"),
    "payloads": lambda k: (k.payload("job:j:1"), '{"started": NaN}'),
    "leader": lambda k: (k.leader, "\udcff" + HUGE),
}


@pytest.mark.parametrize("family", sorted(BAD))
async def test_an_agent_stays_healthy_and_leads_past_a_hostile_record(tmp_path, family):
    """The review's reproduction and its class: the only agent leads, stays
    healthy cycle after cycle, and names the record once in a bad_record event."""
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    key, value = BAD[family](keys)
    lease = (await store.grant(1)).id if family == "leader" else 0  # a dead writer's leader key
    await store.put(key, value, lease)
    try:
        async with running_agent(tmp_path, store) as agent:
            await wait_until(agent.is_leader, 15, f"n1 to lead despite a bad {family} record")
            cycles = agent.reconciler.cycles
            await wait_until(lambda: agent.reconciler.cycles >= cycles + 3, 15, "three more decision cycles")
            assert agent.is_leader() and agent.healthy and agent.reconciler.failing is None
            await agent.events.flush()
            events = await read_events(store, keys)
            assert not [e for e in events if e["kind"] == "decision_loop_failed"]
            if family not in ("payloads", "leader"):  # payloads are in no decision; the leader key is gone
                named = [e for e in events if e["kind"] == "bad_record" and e["key"] == key]
                assert len(named) == 1, events
    finally:
        await store.close()


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
    good = member_record(f"http://127.0.0.1:{backend_port}")
    ring = shared_keys("n1", "n2", "n3")  # members the router hears (the router routes to no other)
    await store.put(keys.member("n1"), json.dumps(good))
    await store.put(keys.member("n2"), json.dumps({"inference": "x"}))
    metadata = {"inference": {"url": "http://169.254.169.254:80", "ready": True}}
    await store.put(keys.member("n3"), json.dumps(metadata))  # a record aiming the router at cloud metadata
    router = Router(parse_router_config({"cluster": "bad", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                                         "listen": {"port": router_port},
                                         "heartbeat": {"port": hb_port, **ring["ring"]}}), store)
    await router.start()
    await router.listen("127.0.0.1", router_port)
    beats = HeartbeatSender("bad", ring, ["n1", "n2", "n3"], ("127.0.0.1", hb_port)).start()
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
        await beats.stop()
        await router.stop()
        await runner.cleanup()
        await store.close()


async def test_status_names_a_malformed_record_instead_of_a_traceback():
    from vigil.cluster_status import gather_status
    from vigil.cli.status_view import render_table
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


async def test_the_commands_read_hostile_payloads_and_events_and_print_them():
    """`vigil status`, `vigil payloads` and `vigil events` over records no agent wrote
    (7cf5bfd: RecursionError, and `now - started` or fromtimestamp(at) overflowed)."""
    import datetime
    from vigil.cli.cluster_cmd import read_payloads
    from vigil.cluster_status import gather_status, payload_owners
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    for i, value in enumerate(['{"node": "n1", "started": %s}' % HUGE, "[" * 100_000, '{"started": 1e300}']):
        await store.put(keys.payload(f"p{i}"), value)
        await store.put(keys.event(f"e{i}"), value.replace("started", "at"))
    try:
        doc = await gather_status(store, keys)
        owners = await payload_owners(store, keys)
        recs = await read_payloads(store, keys)
        evs = await read_events(store, keys)
    finally:
        await store.close()
    assert owners == ["?", "?", "?"] and isinstance(doc, dict)
    assert [sorted(r) for r in recs] == [["corrupt", "id"]] * 3
    assert [e["kind"] for e in evs] == ["corrupt"] * 3
    for e in evs:
        datetime.datetime.fromtimestamp(e.get("at", 0))


async def test_thousands_of_bad_keys_are_a_bounded_number_of_events(tmp_path):
    """A writer of many bad keys gets BAD_REPORTS events naming keys and one
    saying how many more from each agent, once, not an event per key per agent."""
    from vigil.agent.reconciler import BAD_REPORTS
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    for i in range(200):
        await store.put(keys.member(f"zz{i:03d}"), '{"started_at": ' + HUGE + "}")
    try:
        async with running_agent(tmp_path, store) as agent:
            await wait_until(agent.is_leader, 15, "n1 to lead past 200 bad records")
            cycles = agent.reconciler.cycles
            await wait_until(lambda: agent.reconciler.cycles >= cycles + 3, 15, "three more decision cycles")
            await agent.events.flush()
            bad = [e for e in await read_events(store, keys) if e["kind"] == "bad_record"]
    finally:
        await store.close()
    assert [e["key"] for e in bad[:BAD_REPORTS]] == [keys.member(f"zz{i:03d}") for i in range(BAD_REPORTS)]
    assert len(bad) == BAD_REPORTS + 1 and bad[-1]["more"] == 200 - BAD_REPORTS, bad[-1]


async def test_status_reads_requirements_and_fingerprints_no_agent_wrote():
    """The compat gate in `vigil status` reads every member's requires and fingerprint
    (7cf5bfd: AttributeError on a requirement that is no condition, ValueError on a
    gpu_count that is no number)."""
    from vigil.cluster_status import gather_status
    store = MemoryStore()
    store.start()
    keys = Keys("bad")
    await store.put(keys.member("n1"), json.dumps({"fingerprint": {"gpu_count": 1}}))
    await store.put(keys.member("n2"), json.dumps({"health": {"requires": {"gpu_count": "abc"}}}))
    await store.put(keys.member("n3"), json.dumps({"fingerprint": {"gpu_count": "x", "cpu_flags": 5}}))
    await store.put(keys.member("n4"), json.dumps({"health": {"requires": {"kernel": ">=" + "9" * 5000}}}))
    try:
        doc = await gather_status(store, keys)
    finally:
        await store.close()
    assert sorted(doc["bad_records"]) == [keys.member(n) for n in ("n2", "n3", "n4")]
    assert "is not a condition" in doc["bad_records"][keys.member("n2")]
