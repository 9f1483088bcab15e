"""The deployment walkthrough of docs/deployment.md on three systemd machines
(vigil.testing.deploy_run: the same code tests/system/test_deploy_machines.py
asserts on), timed: package builds, root file system, boot, install, init,
etcd, agents, and each fault under a steady 20 req/s through the VIP:
`systemctl stop` of the leader, a SIGSTOPped agent killed by systemd's
watchdog, the leader machine powered off, crashed (SIGKILL of its init), a
rolling upgrade to version + 1, a fourth machine added. Each fault is timed
to the state it causes (VIP on another machine, a new leader, the agent back
as a standby), never to the clock.

Usage: python bench/deploy.py [--runs N]     (root; debootstrap, systemd-container)
Writes bench/results/deploy.{json,md}. Bounded: every machine, namespace and
process is gone when it returns.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from vigil.testing.deploy_run import walkthrough  # noqa: E402

STEPS = [("package_s", "build the .deb (cached dependencies)"), ("package_next_s", "build version + 1"),
         ("rootfs_s", "root file system (cached after the first run)"), ("boot_s", "boot 3 machines"),
         ("install_n1_s", "dpkg -i on one machine"), ("init_s", "vigil init"), ("etcd_s", "etcd up, auth on"),
         ("agents_s", "agents up, a leader, the VIP held")]
FAULTS = [("stop", "systemctl stop vigil-agent (leader)", "leader_s"),
          ("watchdog", "SIGSTOPped agent: systemd watchdog kill + restart", "restarted_s"),
          ("poweroff", "leader machine powered off: VIP moved", "vip_s"),
          ("crash", "leader machine crashed (SIGKILL init): VIP moved", "vip_s"),
          ("upgrade", "rolling upgrade, 3 machines (drain, dpkg -i, resume)", None),
          ("add_node", "vigil init --add-node n4 until it serves", "join_s")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vigil-bench-deploy-") as d:
            runs.append(walkthrough(Path(d)))
    table = [["step", *[f"run {i + 1} (s)" for i in range(len(runs))], "failed requests"]]
    for key, what in STEPS:
        table.append([what, *[r["timings"].get(key, "") for r in runs], ""])
    for name, what, key in FAULTS:
        values = [r[name].get(key) if key else r["timings"][f"{name}_s"] for r in runs]
        table.append([what, *values, " / ".join(str(r[name]["failed"]) for r in runs)])
    leader = [r[f]["leader_s"] for r in runs for f in ("stop", "poweroff", "crash")]
    notes = (f"Requests answered: {', '.join(str(r['answered']) for r in runs)}; failed in all: "
             f"{', '.join(str(r['failed_total']) for r in runs)}; most machines holding the VIP at once: "
             f"{max(r['max_vip_holders'] for r in runs)}. New leader seen after stop/poweroff/crash: "
             f"{leader} s. Unit exposure (systemd-analyze security, inside a machine): "
             f"{runs[-1]['units']['exposure']}. Machines are systemd-nspawn containers on this host "
             "(shared kernel); timings include the harness's polling (0.05-0.2 s).")
    write("deploy", {"runs": [{k: v for k, v in r.items() if k != "failures"} for r in runs]}, table, notes)


if __name__ == "__main__":
    main()
