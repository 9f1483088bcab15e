"""Watchdog modes on real agents (this machine has no /dev/watchdog, and no
test may arm one that could reset it): required and missing never leads;
required with a file that is no watchdog leads, fails to arm, resigns;
automatic and missing leads and says it runs without one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from vigil.agent.history import read_records
from vigil.core.history import intervals, overlaps
from vigil.lab import Lab
from vigil.lab.cluster import LAB_TIMING

# A 3 s lease leaves a whole second between self-demotion (1.6 s) and expiry.
TIMING = LAB_TIMING | {"lease_ttl": 3}


def test_watchdog_modes_decide_who_may_lead(tmp_path):
    lab = Lab.create(tmp_path / "lab", 3, timing=TIMING)
    # A character device that is no watchdog: it passes the start-up check, and arming
    # it fails (ENOTTY), which is the path this test is about for n2.
    not_a_watchdog = "/dev/null"
    modes = {"n1": {"mode": "required", "device": str(tmp_path / "missing")},
             "n2": {"mode": "required", "device": not_a_watchdog},
             "n3": {"mode": "automatic", "device": str(tmp_path / "missing")}}
    for node in lab.nodes:  # n1 has the highest priority, n3 the lowest
        cfg = yaml.safe_load(Path(node.config).read_text())
        Path(node.config).write_text(yaml.safe_dump(cfg | {"watchdog": modes[node.name]}))
    lab.start()
    try:
        n3_leads = lambda: (lab.leader() or ("",))[0] == "n3"  # noqa: E731
        lab.wait_for(n3_leads, 20, "n3 to lead")
        if lab.agent_status("n2")["healthy"]:  # n3 won the start-up race: hand n2 the role
            subprocess.run([sys.executable, "-m", "vigil", "switchover", "--to", "n2", "--lab",
                            str(lab.root), "--wait", "5"], capture_output=True, timeout=30)
        lab.wait_for(lambda: lab.agent_status("n2")["healthy"] is False, 20, "n2 to fail to arm")
        lab.wait_for(n3_leads, 20, "n3 to lead again")
        st = {n: lab.agent_status(n) for n in ("n1", "n2", "n3")}
        assert st["n1"]["healthy"] is False and "does not exist" in st["n1"]["reasons"][0]
        assert st["n2"]["healthy"] is False and "not a watchdog device" in st["n2"]["reasons"][0]
        assert st["n3"]["healthy"] is True and st["n3"]["watchdog"]["armed"] is False
        assert "does not exist" in st["n3"]["watchdog"]["problem"]
        events = lab.events()
        assert not [e for e in events if e["kind"] == "leader_elected" and e["node"] == "n1"]
        unavailable = {e["node"]: e["cause"] for e in events if e["kind"] == "watchdog_unavailable"}
        assert "this node may not lead" in unavailable["n2"]
        assert "leading without it" in unavailable["n3"]
        members = {m["name"]: m for m in lab.status()["members"]}
        assert members["n3"]["role"] == "leader"
    finally:
        lab.down()
    ivs = intervals(read_records(lab.history_files()))
    assert overlaps(ivs) == [] and not [i for i in ivs if i.node == "n1"]
