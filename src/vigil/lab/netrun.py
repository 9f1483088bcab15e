"""Fault schedules on a lab in network namespaces; run inside the client
namespace (`ip netns exec TAG-c python -m vigil.lab.netrun ...`) so the harness
reaches the nodes' 10.231.0.x addresses. Prints one JSON result: what was
done, what each side saw, and the checker's verdict over every agent's
leadership history (no two leaderships overlap).

Schedules:
  leader_partitioned  the leader's node (agent and etcd member) is cut off from
                      the other two nodes for 3 x TTL, then healed
  leader_loss         20 % packet loss on every packet to and from the leader's
                      node for 10 s
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from vigil.agent.history import intervals, overlaps, read_records
from vigil.lab.cluster import Lab
from vigil.lab.netns import NetTopology


def leader_partitioned(lab: Lab, net: NetTopology) -> dict:
    old, token = lab.wait_for(lab.leader, 20, "a leader")
    i = int(old[1:])
    t0 = time.time()
    net.partition([i], [j for j in (1, 2, 3) if j != i])
    try:
        stepped_down = lab.wait_for(lambda: lab.is_leader(old, timeout=1.0) is False, 10,
                                    "the cut-off leader to stop claiming") and time.time() - t0
        new = lab.wait_for(lambda: (lambda c: c if c and c[0] != old and c[1] > token else None)(
            lab.leader()), 20, "a new leader on the majority side")
        took = time.time() - t0
        hold = time.time() + 3 * 2
        lab.wait_for(lambda: time.time() >= hold, 10, "the partition to last 3 x TTL")
        cut_off_claims = lab.is_leader(old, timeout=1.0)
    finally:
        net.heal()
    healed = time.time()
    after = lab.wait_for(lab.leader, 20, "a leader after healing")
    lab.wait_for(lab.ready, 30, "a whole cluster after healing")
    return {"old": [old, token], "new": list(new), "old_stopped_claiming_s": round(stepped_down, 3),
            "new_leader_s": round(took, 3), "cut_off_leader_claims_at_end": cut_off_claims,
            "leader_after_heal": list(after), "leader_after_heal_s": round(time.time() - healed, 3)}


def leader_loss(lab: Lab, net: NetTopology) -> dict:
    old, token = lab.wait_for(lab.leader, 20, "a leader")
    net.loss(int(old[1:]), 20)
    t0 = time.time()
    try:
        lab.wait_for(lambda: time.time() >= t0 + 10, 20, "10 s of loss")
    finally:
        net.heal()
    after = lab.wait_for(lab.leader, 20, "a leader after the loss")
    lab.wait_for(lab.ready, 30, "a whole cluster after the loss")
    return {"old": [old, token], "leader_after": list(after)}


SCHEDULES = {"leader_partitioned": leader_partitioned, "leader_loss": leader_loss}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--schedule", choices=sorted(SCHEDULES), required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--tag", required=True)
    args = p.parse_args()
    net = NetTopology(3, tag=args.tag)
    lab = Lab.up(Path(args.dir), 3, net=net)
    try:
        result = SCHEDULES[args.schedule](lab, net)
    finally:
        lab.down()
    ivs = intervals(read_records(lab.history_files()))
    result["intervals"] = [[i.node, i.token, i.start, i.end, i.ended_by] for i in ivs]
    result["overlaps"] = [[a.token, b.token] for a, b in overlaps(ivs)]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
