"""Run fault schedules on a lab in network namespaces, and check the run.

Run inside the client namespace of a NetTopology that the caller created
(`ip netns exec TAG-c python -m vigil.chaos.run --tag TAG ...`) so the
harness reaches the nodes' 10.231.0.x addresses. One lab serves every
schedule: named ones (--schedule a,b) and/or random ones (--random N
--seed S). The lab has BMCs (ipmi_sim), a Modbus PLC and the token-guarded
actuator; --no-fence-devices gives the agents no fencing devices, so every
takeover waits for the lease.

Prints one JSON document on stdout: every step (what was done, what was
seen), the checker's verdict over the whole run (vigil.chaos.checker) and the
takeover times. Progress goes to stderr and DIR/steps.jsonl, a line per step.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from vigil.chaos import checker
from vigil.lab.cluster import Lab
from vigil.lab.netns import NetTopology
from vigil.chaos.schedules import NAMED, Chaos, random_schedule


def schedules(names: str, count: int, seed: int, skip: int = 0) -> list[tuple[str, list]]:
    """Named schedules, then random ones: number i of a seed is always the same
    schedule, so a long run can be split into batches with `skip`."""
    out = []
    for name in filter(None, names.split(",")):
        if name not in NAMED:
            raise SystemExit(f"--schedule {name}: unknown; choose from {', '.join(sorted(NAMED))}")
        out.append((name, NAMED[name]))
    rng = random.Random(seed)
    drawn = [(f"random-{seed}-{i + 1}", random_schedule(rng)) for i in range(skip + count)]
    return out + drawn[skip:]


def run(lab: Lab, net: NetTopology, todo: list[tuple[str, list]], seed: int) -> dict[str, Any]:
    chaos = Chaos(lab, net, random.Random(seed))  # picks targets; the schedules are drawn apart
    steps = []
    with open(lab.root / "steps.jsonl", "a") as log:  # kept with the lab for a post-mortem
        for name, plan in todo:
            for res in chaos.run(name, plan):
                steps.append(res)
                for out in (log, sys.stderr):
                    print(json.dumps(res), file=out, flush=True)
    for node in lab.nodes:  # quiesce every writer before reading the register
        lab.stop_agent(node.name)
    final = _register(lab)
    verdict = checker.check(*checker.load(lab), final={0: final} if final is not None else None,
                            recoveries=chaos.recoveries)
    errors = [f"{s['schedule']}: {s['error']}" for s in steps if "error" in s]
    if chaos.broken:
        errors.append(f"the run stopped after {len(steps)} steps: the lab could not be restored")
    verdict.violations += [f"harness error in {e}" for e in errors]
    takeovers = sorted(s["takeover_s"] for s in steps if s.get("takeover_s") is not None)
    return {"steps": steps, "verdict": verdict.to_json(), "takeovers_s": takeovers,
            "final_register": final}


def _register(lab: Lab) -> int | None:
    try:
        with urllib.request.urlopen(lab.fencing.gateway_url + "/read?register=0", timeout=5) as r:
            return int(json.load(r)["value"])
    except (OSError, ValueError, KeyError):
        return None


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m vigil.chaos.run")
    p.add_argument("--dir", required=True)
    p.add_argument("--tag", required=True, help="the NetTopology tag the caller created")
    p.add_argument("--schedule", default="", help=f"comma-separated: {', '.join(NAMED)}")
    p.add_argument("--random", type=int, default=0, metavar="N", help="N random schedules")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip", type=int, default=0, metavar="M", help="start at random schedule M+1")
    p.add_argument("--no-fence-devices", action="store_true", help="takeover waits for leases")
    args = p.parse_args()
    todo = schedules(args.schedule, args.random, args.seed, args.skip)
    if not todo:
        p.error("name --schedule or --random N")
    net = NetTopology(3, tag=args.tag)
    t0 = time.time()
    lab = Lab.up(Path(args.dir), 3, net=net, fencing=True, fence_devices=not args.no_fence_devices)
    try:
        result = run(lab, net, todo, args.seed)
    finally:
        net.heal()
        lab.down()
    result.update(seed=args.seed, fence_devices=not args.no_fence_devices,
                  wall_s=round(time.time() - t0, 1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
