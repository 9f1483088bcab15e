"""End to end: the demo's scenario on the real model loses no request and
detects every fault."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_scenario_zero_failed_requests_every_fault_detected(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vigil", "demo", "--json", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report == json.loads((tmp_path / "demo-report.json").read_text())
    assert (tmp_path / "demo-timeline.png").stat().st_size > 10_000
    assert report["requests_sent"] > 500 and report["requests_failed"] == 0
    faults = {f["name"]: f for f in report["faults"]}
    assert list(faults) == ["kill leader", "hang server", "restart node", "switchover"]
    kill, hang = faults["kill leader"], faults["hang server"]
    assert 0 < kill["detection_ms"] < 1000, "every peer suspected the dead leader"
    assert kill["detail"]["new_token"] > kill["detail"]["old_token"]
    assert 0 < kill["takeover_ms"] < 2000 + 1000, "lease TTL 2 s plus etcd's 500 ms lessor tick"
    assert 0 < hang["detection_ms"] < 1000 and hang["detail"]["cause"].startswith("hung:"), \
        "a frozen engine is hung within a second (it used to take canaries 2-3 s)"
    assert faults["restart node"]["detail"]["role"] == "standby"
    assert faults["switchover"]["detail"]["exit_status"] == 0
    assert all(f["during"]["failed"] == 0 for f in report["faults"])
