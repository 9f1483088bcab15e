"""False suspicions per hour on a healthy lab cluster, at the default
detector settings (100 ms heartbeats, phi threshold 8, min std 20 ms,
acceptable pause 40 ms), under three conditions:

  idle  - nothing else running
  cpu   - both cores saturated by two competing busy-loop processes
  loss  - 5 % of heartbeat packets dropped by nftables (the whole lab runs
          inside a network namespace made for this run; removed afterwards),
          with the default 2 copies of each heartbeat (timing.heartbeat_copies)
  loss-1copy - the same loss with 1 copy (the anchor: how it was before)

The loss conditions run the whole product: model servers, a router and IPMI
fencing, and also count what loss must never cause: fences, failovers
(leader changes) and router ejections (backends made ineligible).

Every agent also keeps a histogram of heartbeat inter-arrival gaps; summed
over all observers it shows how many suspicions a detector that convicts
after T ms of silence would have raised, for each T: the measured
detection-time vs false-suspicion trade-off.

Usage: python bench/detector.py [--minutes 10] [--conditions idle,cpu,loss]
Writes bench/results/detector.{json,md}. Needs root for the loss condition.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from vigil.core.peers import GAP_BUCKETS  # noqa: E402
from vigil.lab import Lab  # noqa: E402
from vigil.lab.cluster import LAB_TIMING  # noqa: E402

BUSY = "while True: pass"


def run_condition(name: str, minutes: float) -> dict:
    """Run one condition in the current network namespace."""
    root = Path(tempfile.mkdtemp(prefix=f"vigil-bench-det-{name}-"))
    loss = name.startswith("loss")
    copies = 1 if name == "loss-1copy" else 2
    lab = Lab.up(root / "lab", 3, timing=LAB_TIMING | {"heartbeat_copies": copies}, model=loss, router=loss,
                 fencing=loss)
    hogs: list[subprocess.Popen] = []
    try:
        if name == "cpu":
            hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 2)]
        t0 = time.time()
        ejected0 = _ejections(lab)
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        elapsed = time.time() - t0
        statuses = {n.name: lab.agent_status(n.name, timeout=5.0) for n in lab.nodes}
        evs = [e for e in lab.events() if e["at"] >= t0]
        ejected = _ejections(lab) - ejected0
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        lab.down()
    suspicions = [e for e in evs if e["kind"] == "peer_suspected"]
    over = {f"{b:g}": 0 for b in GAP_BUCKETS}
    accepted = pauses = 0
    largest = longest_pause = 0.0
    for st in statuses.values():
        accepted += st["heartbeat"]["received"].get("accepted", 0)
        pauses += st["heartbeat"]["local_pauses"]
        longest_pause = max(longest_pause, st["heartbeat"]["longest_local_pause_ms"])
        for p in st["peers"].values():
            largest = max(largest, p["gaps"]["largest"])
            for k, v in p["gaps"]["over"].items():
                over[k] += v
    hours = elapsed / 3600
    return {"condition": name, "seconds": round(elapsed, 1), "observer_peer_pairs": 6, "copies": copies,
            "fences": sum(e["kind"] == "fencing_started" for e in evs),
            "failovers": sum(e["kind"] == "leader_elected" for e in evs),
            "router_ejections": ejected if loss else None,
            "false_suspicions": len(suspicions), "per_hour": round(len(suspicions) / hours, 2),
            "suspicions": [{k: e.get(k) for k in ("node", "peer", "phi", "silent_ms")} for e in suspicions],
            "heartbeats_accepted": accepted, "largest_gap_ms": round(largest * 1000, 1),
            "gaps_over_ms_per_hour": {k: round(v / hours, 1) for k, v in over.items()},
            "local_pauses": pauses, "longest_local_pause_ms": longest_pause}


def _ejections(lab: Lab) -> int:
    """Backends the router made ineligible so far (its state-change counter)."""
    if not lab.router:
        return 0
    import urllib.request

    with urllib.request.urlopen(lab.router.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vigil_router_node_state_changes_total") and 'state="ineligible"' in line))


def run_loss(minutes: float, percent: int, name: str = "loss") -> dict:
    """Re-run this script inside a fresh namespace whose UDP input drops `percent` %."""
    ns = f"vigil-bench-{os.getpid()}"
    out = Path(tempfile.mkdtemp()) / "loss.json"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        rules = ("table inet vigil_loss {\n chain input {\n"
                 "  type filter hook input priority 0; policy accept;\n"
                 f"  meta l4proto udp numgen random mod 100 < {percent} counter drop\n }}\n}}\n")
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inner", name,
                        "--minutes", str(minutes), "--out", str(out)], check=True)
        counters = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "vigil_loss"],
                                  capture_output=True, text=True).stdout
        result = json.loads(out.read_text())
        result["nft"] = " ".join(counters.split())
        result["loss_percent"] = percent
        return result
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--conditions", default="idle,cpu,loss-1copy,loss")
    p.add_argument("--loss", type=int, default=5)
    p.add_argument("--inner", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.inner:
        Path(args.out).write_text(json.dumps(run_condition(args.inner, args.minutes)))
        return 0
    results = []
    for cond in args.conditions.split(","):
        print(f"condition {cond}: {args.minutes:g} min", flush=True)
        r = run_loss(args.minutes, args.loss, cond) if cond.startswith("loss") else run_condition(cond, args.minutes)
        print(f"  {r['false_suspicions']} false suspicions ({r['per_hour']}/h), largest gap "
              f"{r['largest_gap_ms']} ms", flush=True)
        results.append(r)
    bounds = ["0.25", "0.3", "0.4", "0.5", "1"]
    table = [["condition", "heartbeat copies", "minutes", "false suspicions", "per hour", "fences", "failovers",
              "router ejections", "largest gap ms", "local pauses",
              *[f"gaps > {float(b) * 1000:.0f} ms /h" for b in bounds]]]
    for r in results:
        table.append([r["condition"] + (f" ({r['loss_percent']} %)" if "loss_percent" in r else ""),
                      r.get("copies", 2), round(r["seconds"] / 60, 1), r["false_suspicions"], r["per_hour"],
                      r.get("fences", 0), r.get("failovers", 0),
                      "-" if r.get("router_ejections") is None else r["router_ejections"],
                      r["largest_gap_ms"], r["local_pauses"],
                      *[r["gaps_over_ms_per_hour"][b] for b in bounds]])
    write("detector", {"results": results, "settings": {
        "heartbeat_interval": 0.1, "phi_threshold": 8, "min_std_deviation": 0.02,
        "acceptable_pause": 0.04, "copy_spacing": 0.02, "pairs": "3 agents, 6 observer->peer pairs"}},
        table, notes=(
        "False suspicions are `peer_suspected` events while every node was healthy, summed over the "
        "6 observer->peer pairs. The 'gaps > T' columns count heartbeat silences longer than T seen "
        "by any observer: a detector that convicts after T of silence would raise that many false "
        "suspicions per hour. The default phi detector convicts a steady peer after ~245 ms. The loss "
        "conditions run model servers, a router and IPMI fencing too: fences and failovers are events "
        "after the start, router ejections the router's backends made ineligible."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
