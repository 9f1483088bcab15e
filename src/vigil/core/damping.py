"""Flap damping (pure), as Pacemaker's `migration-threshold` with
`failure-timeout`: a node that failed `threshold` times within `window`
seconds is held out (state `held`: no requests, no roles) until its oldest
counted failure leaves the window or an operator clears it (`vigil resume`).

The mass-ejection guard: at most `max_held_fraction` of the cluster's
members are held out at once (those that failed most, ties by name), and of
each failure domain's (at least one); the rest are let back, because damping
that empties the cluster, or a rack, is worse than flapping.

The leader keeps the counts in memory and writes each hold to etcd (with
the time it ends), so a new leader keeps the holds it inherits; the counts
themselves start from zero with it, which can only let a node back earlier.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class DampingRules:
    threshold: int = 3  # failures within the window that hold a node out (0: never)
    window: float = 600.0  # seconds
    max_held_fraction: float = 0.34


class FlapDamper:
    def __init__(self, rules: DampingRules | None = None):
        self.rules = rules or DampingRules()
        self._failures: dict[str, deque[float]] = {}

    def failed(self, node: str, now: float) -> None:
        """Count one failure of `node` (it went from serving to failed) at `now`."""
        self._failures.setdefault(node, deque()).append(now)

    def clear(self, node: str) -> None:
        """An operator put the node back: its count starts from zero."""
        self._failures.pop(node, None)

    def counts(self, now: float) -> dict[str, int]:
        for node, times in list(self._failures.items()):
            while times and now - times[0] >= self.rules.window:
                times.popleft()
            if not times:
                del self._failures[node]
        return {n: len(t) for n, t in self._failures.items()}

    def release_in(self, node: str, now: float) -> float:
        """Seconds until `node`'s oldest counted failure leaves the window."""
        times = self._failures.get(node)
        return max(0.0, times[0] + self.rules.window - now) if times else 0.0

    def held(self, now: float, members: int, domains: Mapping[str, str] | None = None) -> dict[str, str]:
        """{node: why} for the nodes held out now, within the mass-ejection guard,
        cluster-wide and, given `domains` (member -> failure domain) of more than
        one domain, per domain too: at most max(1, fraction x its size) of a
        domain, so flapping concentrated in one rack never empties that rack."""
        r = self.rules
        if r.threshold <= 0:
            return {}
        over = sorted(((-c, n) for n, c in self.counts(now).items() if c >= r.threshold))
        room = int(r.max_held_fraction * max(members, 1))
        domains = domains or {}
        per_domain = domain_rooms(r.max_held_fraction, domains)
        out: dict[str, str] = {}
        for negative, node in over:
            if len(out) >= room:
                break
            domain = domains.get(node)
            if domain in per_domain:
                if per_domain[domain] <= 0:
                    continue
                per_domain[domain] -= 1
            until = self._failures[node][0] + r.window
            out[node] = (f"failed {-negative} times in {r.window:g} s (threshold {r.threshold}); held out for "
                         f"{until - now:.0f} s more, or until `vigil resume {node}`")
        return out


def domain_rooms(fraction: float, domains: Mapping[str, str]) -> dict[str, int]:
    """How many of each failure domain may be held at once; {} for one domain."""
    sizes: dict[str, int] = {}
    for d in domains.values():
        sizes[d] = sizes.get(d, 0) + 1
    return {d: max(1, int(fraction * n)) for d, n in sizes.items()} if len(sizes) > 1 else {}
