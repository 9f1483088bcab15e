"""The deployment walkthrough of docs/deployment.md, on real systemd machines
(vigil.testing.machines): three bare Debian 12 machines get the .deb, one
inventory, `vigil init`, their bundles, etcd and the agent, and then take
faults under a steady stream of requests through the VIP from a client
namespace. tests/system/test_deploy_machines.py asserts on what it returns;
bench/deploy.py writes its timings.

Each step waits for the state it causes (a leader, the VIP on a machine,
an agent back as a standby), never for the clock. The walkthrough is a
sequence of plain functions over one `Cluster`, so a test may stop after
any of them.
"""

from __future__ import annotations

import io
import json
import signal
import ssl
import sys
import tarfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vigil.testing.machines import Client, Machine, Machines, wait_for

SUBNET = "10.231.42"
VIP = f"{SUBNET}.100"
PORT = 8080
CLUSTER_DIR = "/root/vigil-cluster"  # where the operator runs `vigil init`, on n1
TARGET = "/etc/vigil/operator.yaml"


def inventory(names: list[str]) -> dict[str, Any]:
    """docs/deployment.md's inventory: three voters, then workers."""
    return {"cluster": "prod",
            "nodes": [{"name": n, "address": f"{SUBNET}.{i}", "etcd": i <= 3, "failure_domain": f"rack-{i}"}
                      for i, n in ((int(n[1:]), n) for n in names)],
            "vips": [{"address": f"{VIP}/24", "interface": "host0"}],
            "inference": {"url": "http://{address}:8000", "user": "vigil",
                          # no embedding model in the package: the canary asks the reference generator
                          "canary_path": "/v1/completions",
                          "canary_body": {"model": "vigil-reference-lm", "prompt": "canary", "max_tokens": 1},
                          "command": ["/usr/bin/vigil", "serve-model", "--no-embed", "--generate", "reference",
                                      "--host", "{address}", "--port", "8000", "--node", "{node}"]}}


@dataclass
class Cluster:
    machines: Machines
    nodes: dict[str, Machine]
    client: Client
    timings: dict[str, Any] = field(default_factory=dict)
    vip_samples: list[tuple[float, list[str]]] = field(default_factory=list)
    _watching: threading.Event = field(default_factory=threading.Event)

    @property
    def admin(self) -> Machine:
        return self.nodes["n1"]

    def up(self) -> list[Machine]:
        return [m for m in self.nodes.values() if m.running]

    # -- the agents' own view, over their https API --------------------------------
    def status(self, m: Machine) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    f"https://{m.address}:7400/status", headers={"Authorization": f"Bearer {self._token}"}),
                    timeout=1.0, context=self._tls) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None

    def leader(self, among: list[Machine] | None = None) -> tuple[str, int] | None:
        for m in among or self.up():
            s = self.status(m)
            if s and s.get("role") == "leader":
                return s["node"], s["token"]
        return None

    def holders(self) -> list[str]:
        out = []
        for m in self.up():
            r = m.net_run(["ip", "-o", "-4", "addr", "show", "dev", "host0"])
            if r is not None and f" {VIP}/" in r.stdout:
                out.append(m.name)
        return out

    def watch_vip(self) -> None:
        """Sample who holds the VIP, every 0.2 s, until `stop_watching`."""
        def loop() -> None:
            while not self._watching.is_set():
                try:
                    self.vip_samples.append((time.time(), self.holders()))
                except Exception:  # noqa: BLE001 - a machine going down mid-look; the watch goes on
                    pass
                self._watching.wait(0.2)
        threading.Thread(target=loop, daemon=True).start()

    def stop_watching(self) -> int:
        """The most machines seen holding the VIP at once."""
        self._watching.set()
        return max((len(h) for _, h in self.vip_samples), default=0)

    def connect(self, ca: bytes, token: str) -> None:
        self._tls = ssl.create_default_context(cadata=ca.decode())
        self._token = token


def timed(timings: dict[str, Any], name: str, fn, *args) -> Any:
    t0 = time.monotonic()
    out = fn(*args)
    timings[name] = round(time.monotonic() - t0, 2)
    return out


# -- install ---------------------------------------------------------------------------
def install(m: Machine, deb: Path) -> None:
    """`dpkg -i` the package: its Debian dependencies are in the root already."""
    m.copy_in(deb, f"/root/{deb.name}", 0o644)
    m.run(["dpkg", "-i", f"/root/{deb.name}"], timeout=300)


def tree(src: Machine, path: str) -> bytes:
    """A tar of `path` in `src` (as `scp -r` would copy it)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        t.add(f"/proc/{src.init_pid}/root{path}", arcname=Path(path).name)
    return buf.getvalue()


def give_bundle(cluster: Cluster, m: Machine) -> None:
    """Copy m's bundle from the admin machine to m and install it (docs: scp, then install-bundle)."""
    data = tree(cluster.admin, f"{CLUSTER_DIR}/{m.name}")
    m.run(["sh", "-c", "rm -rf /root/bundle && mkdir -m 700 /root/bundle && tar -C /root/bundle -xf -"],
          input=data)
    m.run(["vigil", "install-bundle", f"/root/bundle/{m.name}", "--reload"])


def init_cluster(cluster: Cluster, names: list[str], *flags: str) -> str:
    admin = cluster.admin
    admin.put(f"{CLUSTER_DIR}/inventory.yaml", yaml.safe_dump(inventory(names)).encode())
    return admin.run(["vigil", "init", "--inventory", f"{CLUSTER_DIR}/inventory.yaml", "--out", CLUSTER_DIR,
                      *flags]).stdout


def start_etcd(cluster: Cluster, voters: list[Machine]) -> None:
    for m in voters:  # a new etcd cluster forms only once its members run: start them together
        m.run(["systemctl", "enable", "--now", "--no-block", "etcd"])
    for m in voters:
        wait_for(lambda m=m: m.run(["systemctl", "is-active", "etcd"], check=False).stdout.strip() == "active",
                 90, f"etcd active on {m.name}")
    cluster.admin.run(["vigil", "etcd-auth", "apply", "--users", f"{CLUSTER_DIR}/admin/etcd-users.yaml"])


def start_agents(cluster: Cluster, machines: list[Machine]) -> None:
    for m in machines:
        m.run(["systemctl", "enable", "--now", "--no-block", "vigil-agent"])
    ca = (Path(f"/proc/{cluster.admin.init_pid}/root") / CLUSTER_DIR.lstrip("/") / "secrets/tls/ca.pem")
    token = (ca.parent.parent / "tokens/operator.api-token").read_text().strip()
    cluster.connect(ca.read_bytes(), token)
    wait_for(lambda: cluster.leader(), 120, "a leader")
    wait_for(lambda: cluster.holders(), 60, "the VIP on the leader")
    # in service: every model server answering (before, the routers answer 503: nothing to serve)
    wait_for(lambda: all(ready(cluster, m) for m in machines), 90, "every node ready, its model server too")


def ready(cluster: Cluster, m: Machine) -> bool:
    """m's agent holds its session, is healthy, and its model server answers."""
    s = cluster.status(m)
    return bool(s and s["session"]["ok"] and s["healthy"] and (s.get("inference") or {}).get("ready"))


# -- load ------------------------------------------------------------------------------
def start_load(cluster: Cluster, out: Path):
    """The steady stream through the VIP, from the client namespace (vigil.testing.steady)."""
    return cluster.client.popen([sys.executable, "-m", "vigil.testing.steady", f"http://{VIP}:{PORT}/v1/completions",
                                 str(out), "--rate", "20", "--concurrency", "16"])


def stop_load(proc, out: Path) -> list[dict[str, Any]]:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return [json.loads(line) for line in out.read_text().splitlines()]


def failed_between(samples: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    return [s for s in samples if t0 <= s["start"] <= t1 and s["status"] != 200]
