"""Issue 9: `vigil firewall render` applied on every node of a lab in network
namespaces: an address outside the cluster can no longer reach etcd or the
agent API, while the cluster keeps working (heartbeats, etcd peers, a
leader kill taken over)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.lab.netns import NetTopology

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def net():
    topo = NetTopology(4).create()  # fails (never skips) without root, iproute2 or nftables
    try:
        yield topo
    finally:
        topo.destroy()  # the rulesets live in the node namespaces and go with them


def test_outsiders_are_refused_and_the_cluster_keeps_working(net, tmp_path):
    r = subprocess.run(["ip", "netns", "exec", net.client, sys.executable, "-m", "tests.system.firewall_run",
                        "--tag", net.tag, "--dir", str(tmp_path / "lab")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["outsider"] == {"etcd": "TimeoutError", "etcd_peer": "TimeoutError", "api": "TimeoutError"}, out
    assert out["allowed"] == {"etcd": "open", "api": "open", "peer_api": "open"}, out
    assert out["failover"]["new"] != out["failover"]["old"] and out["ready_again"]
