"""False suspicions per hour on a healthy lab cluster, at the default
detector settings (100 ms heartbeats, phi threshold 8, min std 20 ms,
acceptable pause 40 ms), under three conditions:

  idle  - nothing else running
  cpu   - both cores saturated by two competing busy-loop processes
  loss  - 5 % of heartbeat packets dropped by nftables (the whole lab runs
          inside a network namespace made for this run; removed afterwards),
          with the default 2 copies of each heartbeat (timing.heartbeat_copies)
  loss-1copy - the same loss with 1 copy (the anchor: how it was before)
  stress - stress-ng keeps every core busy (`--cpu 0`, normal priority) while
          two labs run side by side: one with heartbeats on the agent's loop
          (the anchor), one with `heartbeat.realtime` (the heartbeat thread at
          SCHED_FIFO 10, memory locked); cyclictest measures what the kernel
          gives a SCHED_FIFO 10 thread and a normal one under the same load
  stress-memory - the same, with stress-ng's memory hogs as well (`--vm`):
          page reclaim, which memory locking keeps away from the agents

The loss conditions run the whole product: model servers, a router and IPMI
fencing, and also count what loss must never cause: fences, failovers
(leader changes) and router ejections (backends made ineligible).

Every agent also keeps a histogram of heartbeat inter-arrival gaps; summed
over all observers it shows how many suspicions a detector that convicts
after T ms of silence would have raised, for each T: the measured
detection-time vs false-suspicion trade-off.

With `--detection fast` every lab runs vigil.core.timing.FAST_DETECTION (50 ms
heartbeats in 3 copies, a steady sender suspected ~122 ms after its last) and
each row's condition is marked "(fast)"; --append keeps the other profile's rows.

Usage: python bench/detector.py [--minutes 10] [--conditions idle,cpu,loss,stress,stress-memory]
       [--detection standard|fast] [--append]
Writes bench/results/detector.{json,md}. Needs root for the loss condition.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write  # noqa: E402

from vigil.core.peers import GAP_BUCKETS  # noqa: E402
from vigil.core.timing import FAST_DETECTION, Timing  # noqa: E402
from vigil.lab import Lab  # noqa: E402
from vigil.lab.cluster import LAB_TIMING  # noqa: E402

BUSY = "while True: pass"
PROFILE = {"name": "standard", "timing": LAB_TIMING}  # --detection: set once in main


def timing(**extra) -> dict:
    return {**PROFILE["timing"], **extra}


def label(name: str) -> str:
    return name if PROFILE["name"] == "standard" else f"{name} (fast)"


def run_condition(name: str, minutes: float) -> dict:
    """Run one condition in the current network namespace."""
    root = Path(tempfile.mkdtemp(prefix=f"vigil-bench-det-{name}-"))
    loss = name.startswith("loss")
    copies = 1 if name == "loss-1copy" else timing().get("heartbeat_copies", 2)
    lab = Lab.up(root / "lab", 3, timing=timing(heartbeat_copies=copies), model=loss, router=loss,
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
        r = _summary(label(name), lab, t0, copies, _ejections(lab) - ejected0 if loss else None)
        r.pop("statuses")
        return r
    finally:
        for h in hogs:
            h.kill()
            h.wait()
        lab.down()


def _summary(name: str, lab: Lab, t0: float, copies: int, ejected: int | None) -> dict:
    """What the lab's agents saw since `t0`: suspicions, fences, failovers, gaps."""
    elapsed = time.time() - t0
    statuses = {n.name: lab.agent_status(n.name, timeout=5.0) for n in lab.nodes}
    evs = [e for e in lab.events() if e["at"] >= t0]
    suspicions = [e for e in evs if e["kind"] == "peer_suspected"]
    over = {f"{b:g}": 0 for b in GAP_BUCKETS}
    accepted = pauses = gaps = 0
    largest = longest_pause = 0.0
    for st in statuses.values():
        accepted += st["heartbeat"]["received"].get("accepted", 0)
        pauses += st["heartbeat"]["local_pauses"]
        longest_pause = max(longest_pause, st["heartbeat"]["longest_local_pause_ms"])
        for p in st["peers"].values():
            largest = max(largest, p["gaps"]["largest"])
            gaps += p["gaps"].get("count", 0)
            for k, v in p["gaps"]["over"].items():
                over[k] += v
    hours = elapsed / 3600
    return {"condition": name, "seconds": round(elapsed, 1), "observer_peer_pairs": 6, "copies": copies,
            "timing": timing(), "suspicion_ms": round(Timing(**timing()).suspicion_time * 1000, 1),
            "fences": sum(e["kind"] == "fencing_started" for e in evs),
            "failovers": sum(e["kind"] == "leader_elected" for e in evs),
            "router_ejections": ejected,
            "false_suspicions": len(suspicions), "per_hour": round(len(suspicions) / hours, 2),
            "suspicions": [{k: e.get(k) for k in ("node", "peer", "phi", "silent_ms")} for e in suspicions],
            "heartbeats_accepted": accepted, "largest_gap_ms": round(largest * 1000, 1),
            "gap_p999_ms": _p999(gaps, over), "gaps": gaps,
            "gaps_over_ms_per_hour": {k: round(v / hours, 1) for k, v in over.items()},
            "local_pauses": pauses, "longest_local_pause_ms": longest_pause, "statuses": statuses}


def _p999(total: int, over: dict[str, int]) -> str:
    """The smallest bucket bound that at most 0.1 % of the gaps exceed (the histogram's resolution)."""
    for bound, n in over.items():
        if total and n <= total / 1000:
            return f"<= {float(bound) * 1000:g}"
    return f"> {float(list(over)[-1]) * 1000:g}" if over else "-"


HOGS = str(4 * (os.cpu_count() or 2))  # four busy processes per core: every core busy, a queue behind each
STRESS = {"stress": ["--cpu", HOGS, "--cpu-method", "matrixprod"],
          "stress-memory": ["--cpu", HOGS, "--cpu-method", "matrixprod", "--vm", "2", "--vm-bytes", "40%",
                            "--vm-method", "all"]}
REALTIME = {"priority": 10, "lock_memory": True}


def run_stress(name: str, minutes: float) -> list[dict]:
    """Two 3-node labs side by side under one stress-ng, heartbeats on the loop
    and on the real-time thread, and cyclictest beside them: the same load,
    the same minutes, before and after."""
    _need("stress-ng", "cyclictest")
    root = Path(tempfile.mkdtemp(prefix=f"vigil-bench-det-{name}-"))
    labs = {"loop": Lab.up(root / "loop", 3, timing=timing())}
    procs: list[subprocess.Popen] = []
    try:
        labs["realtime 10"] = Lab.up(root / "rt", 3, timing=timing(), workload={"realtime": REALTIME})
        seconds = int(minutes * 60)
        procs.append(subprocess.Popen(["stress-ng", *STRESS[name], "--timeout", f"{seconds + 30}s", "--quiet"]))
        cyclic = {which: subprocess.Popen(["cyclictest", "-q", "-m", "-t", "1", "-i", "10000", "-D", f"{seconds}s",
                                           *args], stdout=subprocess.PIPE, text=True)
                  for which, args in (("SCHED_FIFO 10", ["-p", "10"]), ("SCHED_OTHER", ["--policy=other"]))}
        procs += cyclic.values()
        t0 = time.time()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        latency = {which: _cyclictest(p.communicate(timeout=60)[0]) for which, p in cyclic.items()}
        rows = []
        for kind, lab in labs.items():
            r = _summary(f"{label(name)}, {kind}", lab, t0, copies=timing().get("heartbeat_copies", 2),
                         ejected=None)
            r["cyclictest_max_us"] = latency
            rt = [st["heartbeat"].get("realtime") for st in r.pop("statuses").values()]
            r["realtime"] = rt[0] if rt and rt[0] else None
            rows.append(r)
        return rows
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for lab in labs.values():
            lab.down()


def _need(*tools: str) -> None:
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        package = {"stress-ng": "stress-ng", "cyclictest": "rt-tests"}
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                        *(package[t] for t in missing)], check=True)


def _cyclictest(out: str) -> dict[str, int]:
    """cyclictest -q's last line: `T: 0 (pid) P:10 I:10000 C: n Min: a Act: b Avg: c Max: d` (µs)."""
    fields = out.split()
    return {k.rstrip(":").lower(): int(fields[fields.index(k) + 1]) for k in ("Min:", "Avg:", "Max:")
            if k in fields}


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
                        "--minutes", str(minutes), "--out", str(out), "--detection", PROFILE["name"]],
                       check=True)
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
    p.add_argument("--append", action="store_true", help="keep the rows of other conditions already in the "
                                                         "results file")
    p.add_argument("--detection", choices=("standard", "fast"), default="standard")
    p.add_argument("--inner", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.detection == "fast":
        PROFILE.update(name="fast", timing=LAB_TIMING | FAST_DETECTION)
    if args.inner:
        Path(args.out).write_text(json.dumps(run_condition(args.inner, args.minutes)))
        return 0
    results = []
    if args.append and (RESULTS / "detector.json").exists():
        ran = tuple(label(c) for c in args.conditions.split(","))
        results = [r for r in json.loads((RESULTS / "detector.json").read_text())["results"]
                   if r["condition"].split(",")[0] not in ran]
    for cond in args.conditions.split(","):
        print(f"condition {cond}: {args.minutes:g} min", flush=True)
        rows = (run_stress(cond, args.minutes) if cond in STRESS else
                [run_loss(args.minutes, args.loss, cond) if cond.startswith("loss") else
                 run_condition(cond, args.minutes)])
        for r in rows:
            print(f"  {r['condition']}: {r['false_suspicions']} false suspicions ({r['per_hour']}/h), largest gap "
                  f"{r['largest_gap_ms']} ms, p99.9 {r.get('gap_p999_ms')} ms", flush=True)
        results += rows
    bounds = ["0.102", "0.105", "0.11", "0.125", "0.15", "0.25", "0.3", "0.5"]
    table = [["condition", "heartbeat copies", "suspicion after ms", "minutes", "false suspicions", "per hour", "fences", "failovers",
              "router ejections", "gap p99.9 ms", "largest gap ms", "local pauses",
              *[f"gaps > {float(b) * 1000:.0f} ms /h" for b in bounds], "cyclictest max µs (FIFO 10 / normal)"]]
    for r in results:
        lat = r.get("cyclictest_max_us") or {}
        table.append([r["condition"] + (f" ({r['loss_percent']} %)" if "loss_percent" in r else ""),
                      r.get("copies", 2), r.get("suspicion_ms", 244.5), round(r["seconds"] / 60, 1), r["false_suspicions"], r["per_hour"],
                      r.get("fences", 0), r.get("failovers", 0),
                      "-" if r.get("router_ejections") is None else r["router_ejections"],
                      r.get("gap_p999_ms", "-"), r["largest_gap_ms"], r["local_pauses"],
                      *[r["gaps_over_ms_per_hour"].get(b, "-") for b in bounds],
                      " / ".join(str(lat[k].get("max", "-")) for k in ("SCHED_FIFO 10", "SCHED_OTHER")) if lat
                      else "-"])
    write("detector", {"results": results, "settings": {
        "standard": LAB_TIMING, "fast": LAB_TIMING | FAST_DETECTION, "pairs": "3 agents, 6 observer->peer pairs",
        "row": "each result's own `timing` (rows before it was recorded ran the standard profile)"}},
        table, notes=(
        "False suspicions are `peer_suspected` events while every node was healthy, summed over the "
        "6 observer->peer pairs. The 'gaps > T' columns count heartbeat silences longer than T seen "
        "by any observer: a detector that convicts after T of silence would raise that many false "
        "suspicions per hour. The default phi detector convicts a steady peer after ~245 ms; rows marked "
        "(fast) run vigil.core.timing.FAST_DETECTION (50 ms heartbeats in 3 copies 15 ms apart, min std 10 ms, "
        "acceptable pause 20 ms: ~122 ms). The loss "
        "conditions run model servers, a router and IPMI fencing too: fences and failovers are events "
        "after the start, router ejections the router's backends made ineligible. The stress conditions "
        "run two labs at once under one stress-ng (four busy processes per core; with memory hogs): `loop` sends and "
        "times heartbeats on the agent's event loop, `realtime 10` on the heartbeat thread at SCHED_FIFO 10 "
        "with the agent's memory locked (heartbeat.realtime). Gap p99.9 is read off the gap histogram "
        "(bucket bounds 101, 102, 105, 110, 125, 150, 175, 200, 225, 250, 300, 400, 500 ms...). cyclictest: the worst "
        "wake-up latency the kernel gave a SCHED_FIFO 10 thread and a normal one under the same load."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
