"""The whole deployment walkthrough, start to end (vigil.testing.deploy and
deploy_faults): build the packages, boot three machines, install, init,
start, take every fault under load, and return what was measured (the test
asserts on it, bench/deploy.py writes it). Every machine, namespace and
process it makes is gone when it returns or raises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from vigil.testing import deploy_faults as faults
from vigil.testing.deploy import (VIP, Cluster, give_bundle, init_cluster, install, start_agents, start_etcd,
                                  start_load, stop_load, timed)
from vigil.testing.machines import Machines, ensure_rootfs

REPO = Path(__file__).resolve().parents[3]
DIRECT_FAILURES_MAX = 16  # the load's concurrency: connections a dead machine's router may hold
WINDOW_MARGIN = 5.0  # s after a fault's end in which its failures still count as its own


def build_packages(timings: dict[str, Any]) -> tuple[Path, Path, str]:
    """This checkout's .deb and a rebuilt one with the next patch version."""
    def build(*args: str) -> Path:
        r = subprocess.run(["bash", str(REPO / "scripts/package.sh"), "--print-deb", *args],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"scripts/package.sh {' '.join(args)} failed:\n{r.stderr[-4000:]}")
        return Path(r.stdout.strip().splitlines()[-1])
    deb = timed(timings, "package_s", build)
    major, minor, patch = re.search(r"_(\d+)\.(\d+)\.(\d+)_", deb.name).groups()
    following = f"{major}.{minor}.{int(patch) + 1}"
    deb_next = timed(timings, "package_next_s", build, "--version", following, "--out",
                     str(REPO / "build" / "package" / "next"))
    return deb, deb_next, following


def _probe(c: Cluster, n: int = 20) -> set[str]:
    """Which nodes answer requests through the VIP now (X-Vigil-Node)."""
    code = ("import json, sys, urllib.request\nseen = set()\nfor i in range(%d):\n"
            "    r = urllib.request.Request('http://%s:8080/v1/completions', method='POST', data=json.dumps("
            "{'model': 'vigil-reference-lm', 'prompt': 'probe', 'max_tokens': 2}).encode(), "
            "headers={'Content-Type': 'application/json'})\n"
            "    with urllib.request.urlopen(r, timeout=10) as a:\n        seen.add(a.headers.get('X-Vigil-Node'))\n"
            "print(json.dumps(sorted(seen)))\n") % (n, VIP)
    return set(json.loads(c.client.run([sys.executable, "-c", code], timeout=120).stdout))


def bring_up(c: Cluster, deb: Path) -> None:
    """The walkthrough's install part (docs/deployment.md steps 2-7)."""
    t = c.timings
    for m in c.nodes.values():
        timed(t, f"install_{m.name}_s", install, m, deb)
    timed(t, "init_s", init_cluster, c, sorted(c.nodes))
    for m in c.nodes.values():
        give_bundle(c, m)
    timed(t, "etcd_s", start_etcd, c, list(c.nodes.values()))
    timed(t, "agents_s", start_agents, c, list(c.nodes.values()))


def verify_units(c: Cluster) -> dict[str, Any]:
    """`systemd-analyze verify` and `security` of the installed units, on a machine."""
    units = ["vigil-agent.service", "vigil-actuator-gateway.service", "vigil-haproxy-driver.service"]
    v = c.admin.run(["systemd-analyze", "verify", "--man=no", *units], check=False)
    exposure = {}
    for u in units:
        s = c.admin.run(["systemd-analyze", "security", "--no-pager", u], check=False)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", s.stdout)
        exposure[u] = float(m.group(1)) if m else None
    return {"verified": v.returncode == 0 and not v.stderr.strip(), "verify_output": v.stderr[-2000:],
            "exposure": exposure, "journal": journal_fields(c)}


def journal_fields(c: Cluster) -> dict[str, Any]:
    """The fields the agent's `agent_started` record carries in the machine's journal
    (vigil.journal: the native protocol), as `journalctl -o json` reads them."""
    j = c.admin.run(["journalctl", "-u", "vigil-agent", "-o", "json", "--no-pager", "VIGIL_EVENT=agent_started"],
                    check=False)
    lines = [json.loads(x) for x in j.stdout.splitlines() if x.startswith("{")]
    keep = ("VIGIL_NODE", "VIGIL_CLUSTER", "VIGIL_EVENT", "PRIORITY", "SYSLOG_IDENTIFIER", "MESSAGE")
    return {k: lines[-1].get(k) for k in keep} if lines else {"error": (j.stderr or j.stdout)[-300:]}


def walkthrough(work: Path) -> dict[str, Any]:
    timings: dict[str, Any] = {}
    deb, deb_next, following = build_packages(timings)
    root = timed(timings, "rootfs_s", ensure_rootfs)
    load_out = work / "load.jsonl"
    with Machines(root, subnet="10.231.42", workdir=work / "machines") as ms:
        booted = timed(timings, "boot_s", ms.boot_all, [("n1", 1), ("n2", 2), ("n3", 3)])
        c = Cluster(ms, {m.name: m for m in booted}, ms.client(), timings)
        bring_up(c, deb)
        units = verify_units(c)
        load = start_load(c, load_out)
        c.watch_vip()
        try:
            out = _faults(c, deb_next, following)
        finally:
            max_holders = c.stop_watching()
            samples = stop_load(load, load_out)
    order = ("stop", "watchdog", "poweroff", "crash", "upgrade", "add_node")
    for name, after in zip(order, [*order[1:], None]):
        f = out[name]  # its window: until WINDOW_MARGIN s after it, and never into the next fault
        end = min(f["t1"] + WINDOW_MARGIN, out[after]["t0"] if after else float("inf"))
        f["failed"] = len([s for s in samples if f["t0"] <= s["start"] < end and s["status"] != 200])
    return {**out, "timings": timings, "units_verified": units["verified"], "units": units,
            "max_vip_holders": max_holders, "answered": sum(s["status"] == 200 for s in samples),
            "failed_total": sum(s["status"] != 200 for s in samples), "next_version": following,
            "failures": [s for s in samples if s["status"] != 200][:50]}


def _faults(c: Cluster, deb_next: Path, following: str) -> dict[str, Any]:
    t = c.timings
    out: dict[str, Any] = {}
    out["stop"] = timed(t, "stop_s", faults.stop_leader, c)
    out["watchdog"] = timed(t, "watchdog_s", faults.watchdog_kill, c)
    out["poweroff"] = timed(t, "poweroff_s", faults.machine_down, c, "poweroff")
    out["crash"] = timed(t, "crash_s", faults.machine_down, c, "crash")
    out["upgrade"] = timed(t, "upgrade_s", faults.rolling_upgrade, c, deb_next, following)
    out["add_node"] = timed(t, "add_node_s", faults.add_node, c, "n4", 4, deb_next,
                            lambda name: name in _probe(c))
    return out
