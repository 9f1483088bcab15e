"""With etcd on the Vigil nodes, the Vigil leader moves etcd's raft leader off
its own machine (real 3-member etcd, etcd's MoveLeader through the gateway),
so one machine's death never costs an etcd election before the takeover."""

from __future__ import annotations

import asyncio

from vigil.store.etcd import EtcdStore
from vigil.store.raft_leader import RaftCheck, RaftLeaderApart


async def _raft_leader(cluster, deadline_s: float = 15.0, not_: str | None = None) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    while loop.time() < deadline:
        lead = await asyncio.to_thread(cluster.leader)
        if lead and lead != not_:
            return lead
        await asyncio.sleep(0.05)
    raise AssertionError(f"no raft leader (other than {not_}) within {deadline_s} s")


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
