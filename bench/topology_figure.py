"""Draw docs/topology.png: the detection topology (vigil.core.topology) of a
60-node cluster in six racks of ten, for one node, and the heartbeat packets
each node receives as the cluster grows, full mesh against the topology
(vigil.core.plan, computed, not measured: bench/scale.py measures).

Usage: python bench/topology_figure.py [--out docs/topology.png]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vigil.core.plan import Costs, layout, plan  # noqa: E402
from vigil.core.topology import Topology, TopologySettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def positions(t: Topology) -> dict[str, tuple[float, float]]:
    """Racks on a big circle, each rack's nodes on a small one."""
    racks = sorted(set(t.domains.values()), key=lambda d: min(t.domain_members(d)))
    pos = {}
    for r, d in enumerate(racks):
        a = 2 * math.pi * r / len(racks)
        cx, cy = 3.2 * math.cos(a), 3.2 * math.sin(a)
        members = sorted(t.domain_members(d))
        for i, m in enumerate(members):
            b = 2 * math.pi * i / len(members)
            pos[m] = (cx + 0.8 * math.cos(b), cy + 0.8 * math.sin(b))
    return pos


def draw_topology(ax, t: Topology, me: str, leader: str) -> None:
    pos = positions(t)
    for x in t.members:  # everyone -> the leader, faint
        if x != leader:
            ax.plot(*zip(pos[x], pos[leader]), color="#f2c0c0", lw=0.5, zorder=1)
    for y in t.mesh(me):
        ax.plot(*zip(pos[me], pos[y]), color="#3a7bd5", lw=1.2, zorder=2)
    for o in t.observers(me):
        ax.annotate("", xy=pos[me], xytext=pos[o], zorder=3,
                    arrowprops={"arrowstyle": "->", "color": "#2e9e4f", "lw": 1.4})
    for x, (px, py) in pos.items():
        color = "#c0392b" if x == leader else "#3a7bd5" if x == me else "#2e9e4f" if x in t.observers(me) \
            else "#bbbbbb"
        ax.scatter([px], [py], s=70 if x in (me, leader) else 30, color=color, zorder=4)
    ax.annotate(f"{me}", pos[me], textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.annotate(f"leader {leader}", pos[leader], textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_title(f"60 nodes, 6 racks: what {me} sends and hears\n"
                 "blue: its rack's mesh (100 ms, both ways); green: its 8 observers "
                 "(6 must agree);\nred: everyone hears the leader", fontsize=9)
    ax.set_aspect("equal")
    ax.axis("off")


def draw_load(ax) -> None:
    sizes = [10, 30, 60, 100, 300, 1000]
    costs = Costs()
    full = [plan(layout(n, max(1, n // 10)), TopologySettings(full_mesh_up_to=1000), costs)
            ["per_node"]["rx_packets_s_mean"] for n in sizes]
    topo = [plan(layout(n, max(1, n // 10)), TopologySettings(), costs)["per_node"]["rx_packets_s_mean"]
            for n in sizes]
    ax.plot(sizes, full, "o-", color="#c0392b", label="every node hears every other (before)")
    ax.plot(sizes, topo, "o-", color="#2e9e4f", label="domain mesh + 8 observers + leader")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes (racks of 10)")
    ax.set_ylabel("heartbeat packets received per node per s")
    ax.set_title("heartbeat load per node (100 ms, 2 copies)", fontsize=9)
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "topology.png"))
    args = ap.parse_args()
    t = Topology(layout(60, 6))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 6.2), gridspec_kw={"width_ratios": [1.1, 1]})
    draw_topology(a, t, "node-0027", "node-0001")
    draw_load(b)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
