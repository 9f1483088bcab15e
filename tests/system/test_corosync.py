"""Issue 25, the troubleshooting matrix's corosync rows made real: a two-node
corosync ring (Debian's corosync 3, knet) in network namespaces, carrying CPG
traffic, loses 20 % of its packets on the bridge (nftables). Corosync itself
writes "Retransmit List" and "FAILED TO RECEIVE"; `vigil diagnose
--corosync-log` on a healthy Vigil lab names the failure to receive first,
with the node that wrote it and its evidence, and the retransmits after it."""

from __future__ import annotations

import json

from tests.integration.conftest import diagnose
from tests.system.netns import topology
from vigil.lab import Lab
from vigil.procs import wait_for
from vigil.testing.corosync_ring import CorosyncRing


def test_diagnose_names_a_ring_that_fails_to_receive(tmp_path):
    lab = Lab.up(tmp_path / "lab", 3)
    try:
        with topology(2) as net, CorosyncRing(net, tmp_path / "corosync") as ring:
            net.loss(2, 20)
            failed = wait_for(lambda: next((i for i in (1, 2) if any("FAILED TO RECEIVE" in x
                                                                     for x in ring.lines(i))), None),
                              60, "corosync to write FAILED TO RECEIVE")
            net.heal()
            log = ring.log(failed)
            found = diagnose(lab, corosync_log=str(log))
    finally:
        lab.down()
    print("diagnose:", json.dumps(found[:3], indent=1))
    top = found[0]
    assert top["symptom"] == f"corosync on c{failed} failed to receive the ring's messages (FAILED TO RECEIVE)", \
        found[:3]
    assert any("[TOTEM ] FAILED TO RECEIVE" in x for x in top["evidence"]), top
    assert "corosync-cfgtool -s" in top["fix"]
    retransmits = [f for f in found if "TOTEM retransmit lists" in f["symptom"]]
    assert retransmits and all("Retransmit List:" in x for x in retransmits[0]["evidence"]), found
