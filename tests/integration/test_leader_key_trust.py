"""Issue 22 #4 (review B4): a leader key that names no leader anyone may
follow (no lease, a name outside the key ring, a lease that is not the named
member's) is "no leader": an alarm, and removed by a guarded transaction so
an election happens. Before, `put(leader, "ghost")` with no lease left every
agent "following ghost" for good. Two real agents in-process on a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from vigil.agent.daemon import Agent
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.store.etcd import EtcdStore
from vigil.store.events import read_events
from vigil.store.keys import Keys
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

NODES = ("n1", "n2")
KEYS = shared_keys(*NODES)


@contextlib.asynccontextmanager
async def two_agents(tmp_path, endpoints: list[str], cluster: str):
    ports = dict(zip(NODES, (free_ports(2) for _ in NODES)))
    agents = []
    for node in NODES:
        peers = [{"name": p, "addresses": ["127.0.0.1"], "port": ports[p][1]} for p in NODES if p != node]
        cfg = parse_config({"cluster": cluster, "node": node, "data_dir": str(tmp_path / node),
                            "etcd": {"endpoints": endpoints}, "api": {"port": ports[node][0]},
                            "heartbeat": {**KEYS[node], "port": ports[node][1], "peers": peers}})
        agents.append(Agent(cfg))
    stop = asyncio.Event()
    tasks = [asyncio.get_running_loop().create_task(a.run(stop)) for a in agents]
    try:
        yield agents
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def leading(agents):
    return next((a.cfg.node for a in agents if a.is_leader()), None)


async def invalid_events(store, keys):
    return [e for e in await read_events(store, keys) if e["kind"] == "leader_key_invalid"]


async def test_a_lease_less_ghost_leader_key_is_removed_and_a_member_leads(tmp_path, etcd_cluster):
    keys = Keys("ghost-nolease")
    store = EtcdStore(etcd_cluster.endpoints, 5.0)
    try:
        await store.put(keys.leader, "ghost")  # the review's reproduction: no lease
        async with two_agents(tmp_path, etcd_cluster.endpoints, keys.cluster) as agents:
            winner = await wait_until(lambda: leading(agents), 30, "a member to lead over the ghost key")
            kv = await store.get(keys.leader)
            assert kv is not None and kv.value == winner and kv.lease != 0
            for a in agents:
                await a.events.flush()
            alarms = await invalid_events(store, keys)
            assert len(alarms) == 1, "one node removed it; the others' guarded deletes found it gone"
            assert alarms[0]["subject"] == "ghost" and "names 'ghost' with no lease" in alarms[0]["cause"]
    finally:
        await store.close()


@pytest.mark.parametrize("name, member_record", [("intruder", True), ("n2", False)],
                         ids=["a live lease naming a name outside the key ring",
                              "a live lease that is not the named member's"])
async def test_a_leader_key_under_a_live_lease_naming_no_member_is_removed(tmp_path, etcd_cluster, name,
                                                                           member_record):
    keys = Keys(f"ghost-{name}")
    store = EtcdStore(etcd_cluster.endpoints, 5.0)
    lease = await store.grant(600)  # outlives the test by far: only the guarded delete can clear it
    try:
        await store.put(keys.leader, name, lease.id)
        if member_record:  # a record of its own, under the same lease, makes it no member
            await store.put(keys.member(name), json.dumps({"name": name, "priority": 1000}), lease.id)
        async with two_agents(tmp_path, etcd_cluster.endpoints, keys.cluster) as agents:
            winner = await wait_until(lambda: leading(agents), 30, f"a member to lead over the key naming {name}")
            kv = await store.get(keys.leader)
            assert kv is not None and kv.value == winner and kv.lease != lease.id
            assert await store.time_to_live(lease.id) > 0, "removed by a delete of the key, not by the lease"
            for a in agents:
                await a.events.flush()
            alarms = await invalid_events(store, keys)
            assert [e["subject"] for e in alarms] == [name]
    finally:
        await store.revoke(lease.id)
        await store.close()
