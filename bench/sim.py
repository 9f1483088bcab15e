"""The long simulation schedule of issue 11: 200 seeds x 60 virtual minutes
of three real agents (tests/sim/cluster.py) under seeded faults, on
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

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # tests.sim.cluster
from common import percentile, write  # noqa: E402

TARGET_S = 180.0
BROKEN = {"demote_after": 14.0}


def one(args: tuple[int, float, bool]) -> dict:
    seed, minutes, broken = args
    from tests.sim.cluster import SimCluster, quiet_logs
    quiet_logs()
    d = Path(tempfile.mkdtemp(prefix="vigil-simbench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    t0 = time.perf_counter()
    try:
        r = SimCluster(seed, d, unchecked_timing=BROKEN if broken else None).run(minutes * 60)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"seed": seed, "wall_s": time.perf_counter() - t0, "terms": len(r.intervals),
            "overlaps": len(r.overlaps), "tokens_increase": r.tokens_increase(),
            "leaders_at_end": r.leaders_at_end, "faults": [f.split()[1] for f in r.faults]}


def schedule(seeds: int, minutes: float, broken: bool, workers: int) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        runs = list(pool.map(one, [(s, minutes, broken) for s in range(seeds)]))
    return runs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--control-seeds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
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
