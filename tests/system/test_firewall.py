"""Issue 9: `vigil firewall render` applied on every node of a lab in network
namespaces: an address outside the cluster can no longer reach etcd or the
agent API, while the cluster keeps working (heartbeats, etcd peers, a
leader kill taken over)."""

from __future__ import annotations

import pytest

from tests.system.netns import run_in_client, topology


@pytest.fixture
def net():
    with topology(4) as topo:  # the rulesets live in the node namespaces and go with them
        yield topo


def test_outsiders_are_refused_and_the_cluster_keeps_working(net, tmp_path):
    out = run_in_client(net, "tests.system.firewall_run", tmp_path / "lab", timeout=300)
    assert out["outsider"] == {"etcd": "TimeoutError", "etcd_peer": "TimeoutError", "api": "TimeoutError"}, out
    assert out["allowed"] == {"etcd": "open", "api": "open", "peer_api": "open"}, out
    assert out["failover"]["new"] != out["failover"]["old"] and out["ready_again"]
