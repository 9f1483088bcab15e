"""The growth planner behind `vigil plan`: for N nodes in D failure domains,
how many etcd voters, who observes whom (vigil.core.topology), and what the
heartbeats cost each node; and the checks `vigil plan --check` runs on a
live cluster against it. Plain functions of their arguments.

Voters: etcd is the only consensus engine, so its voters are few and odd
(3 tolerate one loss, 5 two); never an even number (it adds a member to the
quorum and no failure tolerance); workers are not voters. 5 from 5 domains
or 100 nodes on, one voter per domain where there are domains enough, so
that no one rack's loss takes a quorum away.
"""

from __future__ import annotations

from dataclasses import dataclass

from vigil.core.records import JSONable
from vigil.core.topology import Topology, TopologySettings


@dataclass(frozen=True)
class Costs:
    """What one heartbeat costs here (measured by the caller)."""

    interval: float = 0.1  # s between heartbeats
    copies: int = 2  # packets per heartbeat (dual links)
    verify_us: float = 100.0  # per received packet
    send_us: float = 60.0  # per heartbeat signed (once, whatever the fan-out)


def layout(nodes: int, domains: int) -> dict[str, str]:
    """Names node-0001.. in `domains` contiguous racks rack-1.. of near-equal size."""
    per = -(-nodes // max(1, domains))
    return {f"node-{i + 1:04d}": f"rack-{i // per + 1}" for i in range(nodes)}


def voters(members: dict[str, str]) -> list[str]:
    """The etcd voters: 3, or 5 from 5 domains or 100 nodes on; spread over the domains."""
    want = 5 if len(set(members.values())) >= 5 or len(members) >= 100 else 3
    want = min(want, len(members) if len(members) % 2 else len(members) - 1)
    by_domain: dict[str, list[str]] = {}
    for m in sorted(members):
        by_domain.setdefault(members[m], []).append(m)
    chosen: list[str] = []
    while len(chosen) < want:  # round-robin over the domains: one each before any gets two
        for d in sorted(by_domain, key=lambda d: (min(by_domain[d] or ["~"]), d)):
            if by_domain[d] and len(chosen) < want:
                chosen.append(by_domain[d].pop(0))
    return chosen


def plan(members: dict[str, str], settings: TopologySettings = TopologySettings(),
         costs: Costs = Costs()) -> dict[str, JSONable]:
    """The plan for this membership: voters, topology and per-node load."""
    t = Topology(members, settings)
    leader = t.members[0] if t.members else None
    rate = costs.copies / costs.interval
    others = [m for m in t.members if m != leader]
    fan_in = max((len(t.subjects(m, leader)) for m in others), default=0)
    mean_in = sum(len(t.subjects(m, leader)) for m in others) / len(others) if others else 0.0
    rx = [_rx_packets(t, m, leader, rate) for m in others]
    rx_max, rx_mean = max(rx, default=0.0), sum(rx) / len(rx) if rx else 0.0
    out_leader = len(t.watchers(leader, leader)) if leader else 0
    domains = sorted(set(members.values()))
    return {
        "nodes": len(members), "domains": len(domains),
        "etcd_voters": voters(members),
        "topology": {"full_mesh": t.full_mesh, "observers": settings.observers,
                     "agreement": settings.agreement, "full_mesh_up_to": settings.full_mesh_up_to,
                     "domain_mesh_up_to": settings.domain_mesh_up_to,
                     "observer_every": settings.observer_every,
                     "meshed_domains": sorted(d for d in domains if
                                              len(t.domain_members(d)) <= settings.domain_mesh_up_to)},
        "per_node": {"peers_heard_mean": round(mean_in, 1), "peers_heard_max": fan_in,
                     "rx_packets_s_mean": round(rx_mean, 1), "rx_packets_s_max": round(rx_max, 1),
                     "cpu_pct_mean": _cpu_pct(rx_mean, costs), "cpu_pct_max": _cpu_pct(rx_max, costs)},
        "leader": {"tx_packets_s": round(out_leader * rate, 1)},
        "observers": {m: sorted(t.observers(m)) for m in t.members},
        "costs": {"verify_us": round(costs.verify_us, 1), "send_us": round(costs.send_us, 1),
                  "interval_s": costs.interval, "copies": costs.copies},
    }


def _rx_packets(t: Topology, node: str, leader: str | None, rate: float) -> float:
    """Heartbeat packets a second `node` receives: `rate` from its mesh and the
    leader, 1/observer_every of it from the nodes it observes (Topology.paced)."""
    every = t.settings.observer_every
    return sum(rate / every if t.paced(s, node, leader) else rate for s in t.subjects(node, leader))


def _cpu_pct(packets: float, costs: Costs) -> float:
    """% of a core: verifying `packets` a second, and signing our own."""
    return round(packets * costs.verify_us / 1e4 + costs.send_us / costs.interval / 1e4, 2)


def check(configured: dict[str, str], registered: set[str], etcd_voters: int | None,
          settings: TopologySettings) -> list[tuple[str, str, str]]:
    """(level ERROR|WARN, problem, fix) for a live cluster against its plan."""
    out = []
    if etcd_voters is not None and etcd_voters % 2 == 0:
        out.append(("ERROR", f"etcd has {etcd_voters} voters, an even number: as many losses tolerated as "
                             f"{etcd_voters - 1} and a larger quorum", "remove one voter "
                             "(`etcdctl member remove`) or add one; workers need not be voters"))
    elif etcd_voters is not None and etcd_voters not in (3, 5):
        out.append(("WARN", f"etcd has {etcd_voters} voters", "use 3 (one loss tolerated) or 5 (two)"))
    for m in sorted(registered - set(configured)):
        out.append(("ERROR", f"{m} is registered in etcd but not in this configuration's peers: the "
                             "members disagree on who watches whom", f"add {m} to every node's "
                             "heartbeat.peers (`vigil init --add-node`) and reload"))
    for m in sorted(set(configured) - registered):
        out.append(("WARN", f"{m} is configured but has no member record (down, or never started)",
                    f"start vigil-agent on {m}, or remove it from the inventory"))
    t = Topology(configured, settings)
    if not t.full_mesh:
        for d in sorted(set(configured.values())):
            size = len(t.domain_members(d))
            if size > settings.domain_mesh_up_to:
                out.append(("WARN", f"failure domain {d} has {size} members, more than domain_mesh_up_to "
                                    f"({settings.domain_mesh_up_to}): its nodes are watched by observers "
                                    "only", "split it into smaller failure domains (racks)"))
        thin = sorted(m for m in configured if len(t.observers(m)) < settings.observers)
        if thin:
            out.append(("WARN", f"{len(thin)} node(s) have fewer than {settings.observers} observers "
                                f"(e.g. {thin[0]})", "add nodes outside their domain or lower "
                                "heartbeat.topology.observers"))
    return out
