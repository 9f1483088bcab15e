"""`vigil preflight` on a real lab node (real etcd, a running agent): its
ports are held by its own agent, its peers' clock offsets come from the
agent's heartbeats, etcd's version and disk are read for real; and the
failures made real: a port another process holds, an etcd that does not
answer. The machine checks' failures are in tests/unit/test_preflight.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import yaml

from vigil.lab import Lab


def preflight(*args: str) -> tuple[int, dict]:
    p = subprocess.run([sys.executable, "-m", "vigil", "preflight", "--json", *args],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    doc = json.loads(p.stdout)
    assert doc["exit_code"] == p.returncode
    return p.returncode, {c["id"]: c for c in doc["checks"]}


def test_preflight_on_a_running_node_and_on_a_broken_copy_of_its_configuration(tmp_path):
    lab = Lab.up(tmp_path / "lab", 3)
    try:
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
        rc, _ = preflight("--config", str(broken), f"--ignore-preflight-errors=Port-tcp-{raw['api']['port']},Etcd,"
                          "TimeSync,Sysctl,KernelVersion")
        assert rc == 0, "every error named: exit 0"
    finally:
        lab.down()
