"""Run inside the client namespace of a NetTopology(30) (see test_rack_cut.py):
an agents-only lab of 30 nodes, one per namespace, in three failure domains
of ten (rack-1: n1..n10 with the etcd members on n1..n3, rack-2, rack-3),
with the detection topology's defaults (domain meshes + 8 observers + the
leader). rack-3 is cut off from every other node at once (its switch), then
healed. Prints one JSON document: what the leader wrote and recorded, who
suspected whom, and how long each step took."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vigil.errors import StoreError
from vigil.lab import Lab
from vigil.lab.netns import NetTopology

NODES = 30
RACK = list(range(21, 31))


def states(lab: Lab) -> dict[str, str]:
    """The node states the leader wrote; {} while etcd is too busy to answer
    this poll in 2 s (30 agents on 2 cores: the next poll asks again)."""
    from vigil.store.keys import Keys
    from vigil.store.registry import Registry

    try:
        return dict(lab.with_store(lambda store: Registry(store, Keys(lab.cluster)).snapshot()).states)
    except StoreError:
        return {}


def events(lab: Lab) -> list[dict]:
    """The event log, [] while etcd is too busy to answer this poll."""
    try:
        return lab.events()
    except StoreError:
        return []


def settled(lab: Lab, rack: set[str]) -> bool:
    """Every agent outside `rack` answers, holds none of the rack's nodes it
    watches alive and every other peer alive: the cut's steady state, whose
    events (right or wrong) have all been recorded by then."""
    for node in lab.nodes:
        if node.name in rack:
            continue
        st = lab.agent_status(node.name, 2)
        if not st or any((p in rack) == (v["state"] == "alive") for p, v in st["peers"].items()):
            return False
    return True


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--tag", required=True)
    a.add_argument("--dir", required=True)
    args = a.parse_args()
    net = NetTopology(NODES, tag=args.tag)
    t_up = time.monotonic()
    lab = Lab.up(Path(args.dir), NODES, net=net, timeout=240)
    out: dict = {"lab_up_s": round(time.monotonic() - t_up, 1)}
    try:
        rack = {f"n{i}" for i in RACK}
        leader, token = lab.wait_for(lab.leader, 30, "the leader key")
        out["leader_before"], out["token_before"] = leader, token
        out["peers_watched"] = {n.name: len((lab.agent_status(n.name, 3) or {}).get("peers", {}))
                                for n in lab.nodes}
        t0, m0 = time.time(), time.monotonic()
        net.partition([i for i in range(1, NODES + 1) if i not in RACK], RACK)
        lab.wait_for(lambda: all(states(lab).get(n) == "failed" for n in rack), 60,
                     "the leader to mark all of rack-3 failed", poll=0.1)
        out["all_failed_s"] = round(time.monotonic() - m0, 2)
        lab.wait_for(lambda: any(e["kind"] == "domain_lost" and e["at"] >= t0 for e in events(lab)), 30,
                     "the domain_lost event", poll=0.2)
        out["settled_s"] = round(time.monotonic() - m0, 2)
        lab.wait_for(lambda: settled(lab, rack), 30, "every node outside rack-3 to hear every peer "
                     "but the rack's", poll=0.2)
        during = [e for e in lab.wait_for(lambda: events(lab), 30, "the event log") if e["at"] >= t0]
        out["leader_after"], out["token_after"] = lab.wait_for(lab.leader, 30, "the leader key")
        out["states_after_cut"] = states(lab)
        t1, m1 = time.time(), time.monotonic()
        net.heal()
        lab.wait_for(lambda: all(states(lab).get(n) == "standby" for n in rack), 90,
                     "rack-3 back as standbys", poll=0.2)
        out["rejoined_s"] = round(time.monotonic() - m1, 2)
        out["events"] = [{k: e.get(k) for k in ("at", "node", "kind", "subject", "peer", "nodes", "state")}
                         for e in during]
        out["events_after_heal"] = [{k: e.get(k) for k in ("node", "kind", "subject", "peer")}
                                    for e in lab.wait_for(lambda: events(lab), 30, "the event log")
                                    if e["at"] >= t1]
    finally:
        net.heal()
        lab.down()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
