"""Issue 22 #4 (review B4): a leader key that names no leader anyone may
follow (no lease, a name outside the key ring, a lease that is not the named
member's) is "no leader": an alarm, and removed by a guarded transaction so
an election happens. Before, `put(leader, "ghost")` with no lease left every
agent "following ghost" for good. Two real agents in-process on a real etcd."""

from __future__ import annotations

import json

from tests.integration.agentharness import agents_running
from vigil.store.base import Expect
from vigil.store.etcd import EtcdStore
from vigil.store.events import read_events
from vigil.store.keys import Keys
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

NODES = ("n1", "n2")
KEYS = shared_keys(*NODES)


def two_agents(tmp_path, endpoints: list[str], cluster: str):
    return agents_running(tmp_path, cluster, NODES, KEYS, lambda node: {"endpoints": endpoints})


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


async def test_a_leader_key_under_a_live_lease_naming_a_name_outside_the_ring_is_removed(tmp_path, etcd_cluster):
    keys = Keys("ghost-intruder")
    store = EtcdStore(etcd_cluster.endpoints, 5.0)
    lease = await store.grant(600)  # outlives the test by far: only the guarded delete can clear it
    try:
        await store.put(keys.leader, "intruder", lease.id)  # with a record of its own: still no member
        # (its record under another lease: one under the key's own lease is how a node added
        # before every ring holds its key looks, and is an alarm, never removed: test_reconcile)
        await store.put(keys.member("intruder"), json.dumps({"name": "intruder", "priority": 1000}))
        async with two_agents(tmp_path, etcd_cluster.endpoints, keys.cluster) as agents:
            winner = await wait_until(lambda: leading(agents), 30, "a member to lead over the intruder's key")
            kv = await store.get(keys.leader)
            assert kv is not None and kv.value == winner and kv.lease != lease.id
            assert await store.time_to_live(lease.id) > 0, "removed by a delete of the key, not by the lease"
            for a in agents:
                await a.events.flush()
            alarms = await invalid_events(store, keys)
            assert [e["subject"] for e in alarms] == ["intruder"]
            assert "names 'intruder', which is not in the key ring" in alarms[0]["cause"]
            assert await store.get(keys.state("intruder")) is None, "no state for a name outside the ring"
    finally:
        await store.revoke(lease.id)
        await store.close()


async def test_a_key_naming_the_leader_under_another_members_lease_is_removed(tmp_path, etcd_cluster):
    """A compromised member's credential replaces the leader key with one naming the
    leader under its own lease: the leader demotes (the key is not its campaign's),
    and the key, no campaign's, is removed; a member then leads on its own lease."""
    keys = Keys("ghost-borrowed")
    store = EtcdStore(etcd_cluster.endpoints, 5.0)
    try:
        async with two_agents(tmp_path, etcd_cluster.endpoints, keys.cluster) as agents:
            first = await wait_until(lambda: leading(agents), 30, "a first leader")
            other = next(a for a in agents if a.cfg.node != first)
            kv = await store.get(keys.leader)
            ok, _ = await store.txn([Expect(keys.leader, mod_revision=kv.mod_revision)],
                                    [(keys.leader, first, other.registration.session.lease_id)])
            assert ok
            await wait_until(lambda: any(a.is_leader() and a.leadership.token > kv.create_revision for a in agents),
                             30, "a member to lead again under a key of its own")
            now = await store.get(keys.leader)
            holder = next(a for a in agents if a.cfg.node == now.value)
            assert now.lease == holder.registration.session.lease_id
            for a in agents:
                await a.events.flush()
            alarms = await invalid_events(store, keys)
            assert [e["subject"] for e in alarms] == [first]
            assert f"names '{first}' but is bound to {other.cfg.node}'s lease" in alarms[0]["cause"]
    finally:
        await store.close()
