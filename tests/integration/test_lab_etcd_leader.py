"""The lab moves etcd's raft leadership off a member on request (the chaos
harness does before cutting off a standby whose machine runs that member)."""

from __future__ import annotations

from vigil.lab.etcd import EtcdCluster


def test_move_leader_off_hands_raft_leadership_to_another_member(tmp_path):
    cluster = EtcdCluster.plan(tmp_path / "etcd")
    cluster.start()
    try:
        cluster.wait_healthy(30)
        before = cluster.leader()
        assert before is not None
        others = [m.name for m in cluster.members if m.name != before]
        cluster.move_leader_off(others[0])  # not the leader: nothing to do
        assert cluster.leader() == before
        cluster.move_leader_off(before)
        assert cluster.leader() in others
    finally:
        cluster.stop()
