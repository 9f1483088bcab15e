"""System tests (root): the lab's nodes in network namespaces, faults made with
nftables on the bridge, and the leadership histories checked for overlap."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vigil.lab.netns import NetTopology


@pytest.fixture
def net():
    topo = NetTopology(3).create()  # fails (never skips) without root, iproute2 or nftables
    try:
        yield topo
    finally:
        topo.destroy()


def run_schedule(net, tmp_path, schedule):
    r = subprocess.run(["ip", "netns", "exec", net.client, sys.executable, "-m", "vigil.lab.netrun",
                        "--schedule", schedule, "--dir", str(tmp_path / "lab"), "--tag", net.tag],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_leader_cut_off_from_etcd_and_peers_steps_down_before_a_successor(net, tmp_path):
    res = run_schedule(net, tmp_path, "leader_partitioned")
    assert res["overlaps"] == [], res
    assert res["new"][1] > res["old"][1] and res["new"][0] != res["old"][0]
    assert res["old_stopped_claiming_s"] < res["new_leader_s"], "it stopped before anyone else started"
    assert res["cut_off_leader_claims_at_end"] is False
    assert res["leader_after_heal"], "a leader exists after the partition heals"


def test_twenty_percent_loss_on_the_leaders_links_keeps_one_leader(net, tmp_path):
    res = run_schedule(net, tmp_path, "leader_loss")
    assert res["overlaps"] == [], res
    assert res["leader_after"], "a leader exists after the loss ends"
