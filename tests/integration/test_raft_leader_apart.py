"""With etcd on the Vigil nodes, the Vigil leader moves etcd's raft leader off
its own machine (real 3-member etcd, etcd's MoveLeader through the gateway),
so one machine's death never costs an etcd election before the takeover."""

from __future__ import annotations

import asyncio

from vigil.store.etcd import EtcdStore
from vigil.store.raft_leader import RaftCheck, RaftLeaderApart
from vigil.testing.wait import wait_for_value


async def _raft_leader(cluster, not_: str | None = None) -> str:
    """The raft leader's name, once there is one (other than `not_`)."""
    async def elected() -> bool:
        return await asyncio.to_thread(cluster.leader) not in (None, not_)
    await wait_for_value(elected, True, 15)
    return await asyncio.to_thread(cluster.leader)


async def test_the_raft_leader_leaves_the_vigil_leaders_machine(etcd_cluster):
    etcd_cluster.wait_healthy(30)
    lead = await _raft_leader(etcd_cluster)
    store = EtcdStore(etcd_cluster.endpoints, timeout=5.0)
    try:
        done = await RaftLeaderApart(store, lead).check()
        assert done.moved_to and done.moved_to != lead and done.problem is None
        assert await _raft_leader(etcd_cluster, not_=lead) == done.moved_to
        assert await RaftLeaderApart(store, lead).check() == RaftCheck(), "not ours now: nothing to do"
        wrong = await RaftLeaderApart(store, "etcd9").check()
        assert wrong.moved_to is None and "'etcd9' is not a member of the etcd cluster" in wrong.problem
        await store.put("/raft-apart/after", "x")  # the cluster still commits
    finally:
        await store.close()
