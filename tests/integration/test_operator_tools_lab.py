"""The operator's tools on one real lab (real etcd, running agents): `vigil
preflight` on a running node and on a broken copy of its file (a port
another process holds, an etcd that is gone: the machine checks' failures
are in tests/unit/test_preflight.py); the metrics Vigil's alert rules read,
as an agent exports them; the status page and its data, before and during
a leader's failover (bench/status_page.py renders it in Chromium). The
lab's agents run their heartbeats on the real-time thread
(heartbeat.realtime), so the failover is one of theirs too."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from vigil.alerts import RULES
from vigil.lab import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab.up(tmp_path_factory.mktemp("operator") / "lab", 3,
                 workload={"realtime": {"priority": 10, "lock_memory": True}})
    try:
        yield lab
    finally:
        lab.down()


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, dict(r.headers), r.read()


def preflight(*args: str) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "vigil", "preflight", "--json", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads(p.stdout)
    assert doc["exit_code"] == p.returncode
    return p.returncode, {c["id"]: c for c in doc["checks"]}


def test_preflight_on_a_running_node_and_on_a_broken_copy_of_its_configuration(lab, tmp_path):
    cfg = lab.node("n1").config
    rc, checks = preflight("--config", cfg, "--etcd-data-dir", lab.etcd.members[0].data_dir)
    assert checks["Config"]["result"] == "pass"
    ports = [c for i, c in checks.items() if i.startswith("Port-")]
    assert len(ports) == 2 and all("held by this node's agent" in c["found"] for c in ports), ports
    assert checks["PeerClockOffset"]["result"] == "pass" and "2 peers" in checks["PeerClockOffset"]["found"]
    etcd = [c for i, c in checks.items() if i.startswith("Etcd-")]
    assert len(etcd) == 3 and all(c["result"] in ("pass", "error") for c in etcd)
    assert all("#15247" in c["found"] for c in etcd if c["result"] == "error"), "only the lease bug"
    assert checks["EtcdDisk"]["result"] in ("pass", "warning") and "p99" in checks["EtcdDisk"]["found"]
    assert {"KernelVersion", "TimeSync", "HeartbeatLinks", "NVML", "Watchdog"} <= set(checks)
    assert checks["Realtime"]["result"] == "pass" and "SCHED_FIFO 10" in checks["Realtime"]["found"]
    assert preflight("--config", cfg, "--ignore-preflight-errors=all")[0] == 0

    # The same node's file with its API port taken by another process, and an etcd that is gone.
    raw = yaml.safe_load(open(cfg))
    with socket.create_server(("127.0.0.1", 0)) as taken, socket.create_server(("127.0.0.1", 0)) as gone:
        dead = gone.getsockname()[1]
        gone.close()  # a port nothing listens on
        raw["api"]["port"] = taken.getsockname()[1]
        raw["etcd"]["endpoints"] = [f"http://127.0.0.1:{dead}"]
        broken = tmp_path / "broken.yaml"
        broken.write_text(yaml.safe_dump(raw))
        rc, checks = preflight("--config", str(broken))
        api = checks[f"Port-tcp-{raw['api']['port']}"]
    assert rc == 1 and api["result"] == "error" and "taken by pid" in api["found"] and "ss -tlnp" in api["fix"]
    down = checks[f"Etcd-127.0.0.1:{dead}"]
    assert down["result"] == "error" and "does not answer" in down["found"] and "systemctl status etcd" in down["fix"]
    udp = checks[f"Port-udp-{raw['heartbeat']['port']}"]
    assert udp["result"] == "error" and "(python" in udp["found"], "n1's agent holds it, but runs another file"
    rc, _ = preflight("--config", str(broken), "--ignore-preflight-errors=Port,Etcd,TimeSync,Sysctl,KernelVersion")
    assert rc == 0, "every error named: exit 0"


def test_only_the_heartbeat_thread_runs_at_sched_fifo_with_the_agents_memory_locked(lab):
    node = lab.node("n1")
    rt = json.loads(get(node.api_url + "/status")[2])["heartbeat"]["realtime"]
    assert rt["policy"] == "SCHED_FIFO" and rt["priority"] == 10 and rt["memory_locked"] and not rt["problems"], rt
    tasks = {}
    for task in (Path(f"/proc/{node.agent_pid}/task")).iterdir():
        stat = (task / "stat").read_text()
        policy = int(stat.rsplit(")", 1)[1].split()[38])  # field 41 (from 1, the state is 3): the policy
        tasks[int(task.name)] = policy
    assert tasks[rt["thread"]] == os.SCHED_FIFO
    assert all(p == os.SCHED_OTHER for t, p in tasks.items() if t != rt["thread"]), tasks
    status = Path(f"/proc/{node.agent_pid}/status").read_text()
    assert int(re.search(r"^VmLck:\s+(\d+)", status, re.M).group(1)) > 0


def test_an_agent_exports_every_metric_the_alert_rules_read(lab):
    read = {m.removesuffix("_total") for m in re.findall(r"\bvigil_[a-z_]+", RULES.read_text())}
    read -= {"vigil_inference_verdict"}  # no model server in this lab
    _, _, body = get(lab.node("n1").api_url + "/metrics")
    exported = {m.removesuffix("_total")  # families, even empty ones; a counter's as its samples are named
                for m in re.findall(r"^# TYPE (vigil_[a-z_]+) ", body.decode(), re.M)}
    assert read <= exported, f"read by the rules, not exported: {read - exported}"


def test_the_status_page_and_its_data_before_and_during_a_failover(lab):
    node = lab.node("n2")
    status, headers, page = get(node.api_url + "/ui")
    assert status == 200 and b'<script src="ui.js">' in page and "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"refresh" in get(node.api_url + "/ui.js")[2]
    old = lab.leader()[0]
    doc = json.loads(get(node.api_url + "/cluster")[2])
    assert doc["leader"]["name"] == old and [m["name"] for m in doc["members"]] == ["n1", "n2", "n3"]
    assert all(m["verdict"] == "ready" and m["heard"] in ("alive", "self") for m in doc["members"]), doc["members"]
    assert doc["events"] and {"agent_started", "leader_elected"} <= {e["kind"] for e in doc["events"]}
    watcher = next(n for n in lab.nodes if n.name != old)
    lab.kill_agent(old)

    def failover():  # the events part is read from etcd at most every 2 s: it may come a poll later
        d = json.loads(get(watcher.api_url + "/cluster")[2])
        dead = next(m for m in d["members"] if m["name"] == old)
        return d if dead["heard"] == "suspect" and d["leader"] and d["leader"]["name"] != old and \
            any(e["kind"] == "peer_suspected" and old in e["cause"] for e in d["events"]) else None
    lab.wait_for(failover, 60, "the page's data: the old leader suspected, a new leader, the suspicion's event")
