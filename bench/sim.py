"""The long simulation schedule of issue 11: 200 seeds x 60 virtual minutes
of three real agents (vigil/testing/sim_cluster.py) under seeded faults, on
as many worker processes as the machine has cores; and, as its control,
the same simulation with a broken timer relation (demote_after 14 s past
the 10 s lease TTL, slipped past the start-up check) to show the check it
makes is live.

Reports the wall time of the whole schedule against the 3-minute target,
virtual hours simulated per real second, the faults injected by kind, the
leadership terms, overlaps (target 0) and, for the control, the share of
seeds in which an overlap was caught.

Usage: python bench/sim.py [--seeds 200] [--minutes 60] [--control-seeds 20]
Writes bench/results/sim.{json,md}.

Large clusters (issue 24): python bench/sim.py --nodes 1000 [--rack-size 10]
[--minutes 10] [--seeds 1] runs that many real agents through the detection
topology (racks of --rack-size) in one SimLoop, under the large schedule
(vigil/testing/sim_large.py: the leader killed, a node killed, a rack killed, a rack
cut off, a pause past the TTL, a peer cut, each in turn), and writes
bench/results/sim_scale_<N>.{json,md}: wall time, leadership terms, overlaps,
one leader at the end, every killed node's detection against the target,
leader-again times, heartbeat messages delivered and store requests and watch
events per node per virtual second (at the simulation's 5 s heartbeat interval).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import percentile, write  # noqa: E402

TARGET_S = 180.0
QUIET_S = 30.0  # virtual seconds without faults at the end of a run (SimCluster.run's default)
BROKEN = {"demote_after": 14.0}


def _simulate(seed: int, seconds: float, nodes: int = 3, rack_size: int = 0, large: bool = False,
              **cluster: Any) -> tuple[Any, Any, float]:
    """One seeded run in a scratch directory: (cluster, result, wall s); `large`: the
    large-cluster schedule (vigil/testing/sim_large.py, a LargeResult), else SimCluster's."""
    from vigil.testing.sim_cluster import SimCluster, quiet_logs
    from vigil.testing.sim_large import LargeSimCluster
    quiet_logs()
    d = Path(tempfile.mkdtemp(prefix="vigil-simbench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    t0 = time.perf_counter()
    try:
        if large:
            sim = LargeSimCluster(seed, d, nodes, rack_size, **cluster)
            return sim, sim.run_large(seconds, quiet=QUIET_S), time.perf_counter() - t0
        sim = SimCluster(seed, d, nodes=nodes, rack_size=rack_size, **cluster)
        return sim, sim.run(seconds, quiet=QUIET_S), time.perf_counter() - t0
    finally:
        shutil.rmtree(d, ignore_errors=True)


def one(args: tuple[int, float, bool]) -> dict:
    seed, minutes, broken = args
    _, r, wall = _simulate(seed, minutes * 60, unchecked_timing=BROKEN if broken else None)
    return {"seed": seed, "wall_s": wall, "terms": len(r.intervals),
            "overlaps": len(r.overlaps), "tokens_increase": r.tokens_increase(),
            "leaders_at_end": r.leaders_at_end, "faults": [f.split()[1] for f in r.faults]}


def one_large(seed: int, minutes: float, nodes: int, rack_size: int) -> dict:
    sim, r, wall = _simulate(seed, minutes * 60, nodes, rack_size, large=True)
    virtual = minutes * 60 + QUIET_S
    again = [s for s in r.leader_again if s is not None]
    return {"seed": seed, "nodes": nodes, "rack_size": rack_size, "virtual_minutes": minutes,
            "wall_s": round(wall, 1), "terms": len(r.sim.intervals), "overlaps": len(r.sim.overlaps),
            "tokens_increase": r.sim.tokens_increase(), "leaders_at_end": r.sim.leaders_at_end,
            "faults": dict(collections.Counter(f.split()[1] for f in r.sim.faults)), "fault_log": r.sim.faults,
            "detection": r.detection_summary(), "detections": r.detections,
            "leader_again_s": r.leader_again, "leader_again_max_s": max(again) if again else None,
            "leader_lost_for_good": r.leader_again.count(None),
            "longest_leaderless_s": round(r.longest_leaderless_s, 2),
            "messages_per_node_per_virtual_s": round(sim.network.delivered / nodes / virtual, 2),
            **etcd_load(sim.traffic, nodes, virtual)}


def etcd_load(traffic: collections.Counter, nodes: int, virtual: float) -> dict:
    """What the agents asked of the store (vigil/testing/sim_cluster.py LinkedStore), per virtual second."""
    requests = sum(n for op, n in traffic.items() if op not in ("watch", "watch_event"))
    return {"etcd_requests_per_virtual_s": round(requests / virtual, 1),
            "etcd_requests_per_node_per_virtual_s": round(requests / nodes / virtual, 3),
            "watch_events_per_node_per_virtual_s": round(traffic["watch_event"] / nodes / virtual, 3),
            "etcd_requests_by_op": dict(sorted(traffic.items()))}


def large(a: argparse.Namespace) -> None:
    runs = [one_large(seed, a.minutes, a.nodes, a.rack_size) for seed in range(a.seeds or 1)]
    table = [["nodes", "racks of", "seed", "virtual min", "wall s", "faults", "terms", "overlaps",
              "one leader at end", "killed: detected / within target", "detection p50 / max s (target)",
              "leader again max s", "messages/node/virtual s", "etcd requests/virtual s (per node)",
              "watch events/node/virtual s"]]
    for r in runs:
        d = r["detection"]
        table.append([r["nodes"], r["rack_size"], r["seed"], r["virtual_minutes"], r["wall_s"],
                      sum(r["faults"].values()), r["terms"], r["overlaps"], len(r["leaders_at_end"]) == 1,
                      f"{d['killed']}: {d['detected']} / {d['within_target']}",
                      f"{d['p50_s']} / {d['max_s']} ({d['target_s']})",
                      r["leader_again_max_s"], r["messages_per_node_per_virtual_s"],
                      f"{r['etcd_requests_per_virtual_s']} ({r['etcd_requests_per_node_per_virtual_s']})",
                      r["watch_events_per_node_per_virtual_s"]])
    write(f"sim_scale_{a.nodes}", {"runs": runs}, table,
          "Real agents (vigil/testing/sim_cluster.py, vigil/testing/sim_large.py) in one SimLoop on one core, through the "
          "detection topology (defaults: domain meshes, 8 observers, 6 agree); simulation timers (heartbeat "
          "5 s, lease 10 s), so messages per second are 1/50 of what 100 ms heartbeats send, and the "
          "detection target (suspicion time + one heartbeat + one detector tick) is 18 s where the "
          "product's is 0.35 s. Faults, each kind in turn, one every 5-20 s after the last ends: the "
          "leader killed, a node killed, a rack killed at once, a rack cut from etcd and every other "
          "node, a node paused past its lease TTL, a node cut from its peers; a kill is held for twice "
          f"the target. Then {QUIET_S:g} s quiet. Detection: kill to the leader's `failed` state for "
          "the node; leader again: a fault that took the leader to a live node holding the key.")


def schedule(seeds: int, minutes: float, broken: bool, workers: int) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        runs = list(pool.map(one, [(s, minutes, broken) for s in range(seeds)]))
    return runs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, help="default 200 (1 with --nodes)")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--control-seeds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--nodes", type=int, default=0, help="a large cluster instead: this many agents")
    ap.add_argument("--rack-size", type=int, default=10, help="with --nodes: nodes per failure domain")
    a = ap.parse_args()
    if a.nodes:
        if not 4 <= a.nodes <= 2500 or a.rack_size < 1:
            ap.error("--nodes must be 4..2500 and --rack-size at least 1")
        return large(a)
    a.seeds = a.seeds or 200
    runs, wall = schedule(a.seeds, a.minutes, False, a.workers)
    control, control_wall = schedule(a.control_seeds, 10.0, True, a.workers)
    faults = collections.Counter(k for r in runs for k in r["faults"])
    per_seed = [r["wall_s"] for r in runs]
    virtual_h = a.seeds * a.minutes / 60
    doc = {"seeds": a.seeds, "virtual_minutes_each": a.minutes, "workers": a.workers,
           "wall_s": round(wall, 1), "target_wall_s": TARGET_S, "met": wall < TARGET_S,
           "virtual_hours_per_real_s": round(virtual_h / wall, 3),
           "seed_wall_s": {"p50": round(percentile(per_seed, 50), 2), "max": round(max(per_seed), 2)},
           "faults": dict(faults), "terms": sum(r["terms"] for r in runs),
           "overlaps": sum(r["overlaps"] for r in runs),
           "tokens_out_of_order": sum(not r["tokens_increase"] for r in runs),
           "not_one_leader_at_end": [r["seed"] for r in runs if len(r["leaders_at_end"]) != 1],
           "control": {"seeds": a.control_seeds, "virtual_minutes_each": 10, "timing": BROKEN,
                       "wall_s": round(control_wall, 1),
                       "seeds_with_overlap": sum(1 for r in control if r["overlaps"])}}
    table = [["schedule", "seeds x virtual min", "wall s", "faults", "terms", "overlaps"],
             ["correct timers", f"{a.seeds} x {a.minutes:g}", f"{wall:.1f} (target < {TARGET_S:g})",
              sum(faults.values()), doc["terms"], doc["overlaps"]],
             ["control: demote_after 14 > TTL 10", f"{a.control_seeds} x 10", f"{control_wall:.1f}", "-", "-",
              f"caught in {doc['control']['seeds_with_overlap']} of {a.control_seeds} seeds"]]
    notes = (f"{a.workers} worker processes; {doc['virtual_hours_per_real_s']} virtual hours per real second; "
             f"per seed p50 {doc['seed_wall_s']['p50']} s, max {doc['seed_wall_s']['max']} s. "
             f"Faults by kind: {dict(faults)}. Seeds without exactly one leader after the faults: "
             f"{doc['not_one_leader_at_end'] or 'none'}.")
    write("sim", doc, table, notes)


if __name__ == "__main__":
    main()
