"""Who watches whom: the detection topology that keeps each node's heartbeat
load constant as the cluster grows (Rapid's K observers on expander rings,
inside a failure-domain mesh; docs/architecture.md, "Detection topology").

Rules, the same on every node (they depend only on the configured member
names, their failure domains and the settings, never on arrival order):
- A cluster of at most `full_mesh_up_to` members is one mesh: everyone
  watches everyone (the behaviour of every Vigil before this module).
- Above that, a failure domain of at most `domain_mesh_up_to` members is a
  mesh of its own: 100 ms detection among the nodes that share a rack.
- Every node X also has up to K `observers` outside its mesh, chosen on K
  expander rings: ring i orders all members by SHA-256(i, name); X's
  observer on ring i is the first successor that is neither X, in X's mesh,
  nor already chosen. A whole rack lost is therefore judged from outside it.
- Everyone watches the current leader (its standbys, fencers and routers
  must hear a leader crash directly, within the 300 ms budget).
- The mesh and the leader's heartbeats go every interval (100 ms); an
  observer outside the mesh gets every `observer_every`th (500 ms): its
  verdict needs H of K anyway, so it can be slower, and it is most of a
  node's packets (`paced`).
- X is suspected cluster-wide when at least `need(X)` = ceil(H·|obs|/K) of
  its observers suspect it (H of K, Rapid's agreement); in a full mesh the
  rules of vigil.core.view (a majority) apply instead.

A node sends heartbeats to `watchers(me)` and runs detectors on
`subjects(me)`; the two relations are each other's inverse, so every
heartbeat sent is one that somebody times. Per node that is |mesh| + ≈K + 1
peers whatever N is; only the leader sends to all N.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Mapping

DEFAULT_DOMAIN = "default"


@dataclass(frozen=True)
class TopologySettings:
    observers: int = 8  # K: observers per node outside its mesh
    agreement: int = 6  # H: of K observers that must agree before a node is suspected cluster-wide
    full_mesh_up_to: int = 16  # clusters of at most this many members: everyone watches everyone
    domain_mesh_up_to: int = 16  # failure domains of at most this many: a mesh of their own
    observer_every: int = 5  # an observer outside the mesh gets every Nth heartbeat (500 ms)

    def problems(self) -> list[tuple[str, object, str]]:
        """(field, value, fix) for each setting out of range; [] when valid."""
        out: list[tuple[str, object, str]] = []
        if not 1 <= self.observers <= 32:
            out.append(("observers", self.observers, "must be 1..32 (8 is Rapid's and our default)"))
        if not 1 <= self.agreement <= self.observers:
            out.append(("agreement", self.agreement, f"must be 1..observers ({self.observers}): how "
                        "many of a node's observers must suspect it"))
        if not 3 <= self.full_mesh_up_to <= 1000:
            out.append(("full_mesh_up_to", self.full_mesh_up_to, "must be 3..1000 members"))
        if not 2 <= self.domain_mesh_up_to <= self.full_mesh_up_to:
            out.append(("domain_mesh_up_to", self.domain_mesh_up_to, "must be 2..full_mesh_up_to "
                        f"({self.full_mesh_up_to})"))
        if not 1 <= self.observer_every <= 50:
            out.append(("observer_every", self.observer_every, "must be 1..50 heartbeats: an observer "
                        "outside the mesh gets every Nth (1: every one, as in the mesh)"))
        return out


def _ring_key(ring: int, name: str) -> bytes:
    return hashlib.sha256(f"{ring}\0{name}".encode()).digest()


class Topology:
    """The watch relation of one membership. Immutable after construction;
    construction costs O(N·K) (about 20 ms for 1,000 members)."""

    def __init__(self, domains: Mapping[str, str], settings: TopologySettings = TopologySettings()):
        self.settings = settings
        self.members = tuple(sorted(domains))
        self.domains = {m: domains[m] or DEFAULT_DOMAIN for m in self.members}
        self.full_mesh = len(self.members) <= settings.full_mesh_up_to
        self.several_domains = len(set(self.domains.values())) > 1
        self._mesh = self._meshes()
        self._observers = {} if self.full_mesh else self._choose_observers()
        observed: dict[str, set[str]] = {m: set() for m in self.members}
        for subject, obs in self._observers.items():
            for o in obs:
                observed[o].add(subject)
        self._observes = {m: frozenset(s) for m, s in observed.items()}
        self._subjects: dict[tuple[str, str | None], frozenset[str]] = {}  # asked every cycle, per member

    def _meshes(self) -> dict[str, frozenset[str]]:
        everyone = frozenset(self.members)
        if self.full_mesh:
            return {m: everyone - {m} for m in self.members}
        by_domain: dict[str, set[str]] = {}
        for m, d in self.domains.items():
            by_domain.setdefault(d, set()).add(m)
        small = {d: frozenset(ms) for d, ms in by_domain.items() if len(ms) <= self.settings.domain_mesh_up_to}
        return {m: small[d] - {m} if d in small else frozenset() for m, d in self.domains.items()}

    def _choose_observers(self) -> dict[str, frozenset[str]]:
        rings = [sorted(self.members, key=functools.partial(_ring_key, i)) for i in range(self.settings.observers)]
        positions = [{m: p for p, m in enumerate(ring)} for ring in rings]
        n = len(self.members)
        out = {}
        for x in self.members:
            chosen: list[str] = []
            for ring, pos in zip(rings, positions):
                start = pos[x]
                for step in range(1, n):
                    o = ring[(start + step) % n]
                    if o != x and o not in self._mesh[x] and o not in chosen:
                        chosen.append(o)
                        break
            out[x] = frozenset(chosen)
        return out

    # -- the relation ----------------------------------------------------------
    def mesh(self, node: str) -> frozenset[str]:
        """The members that watch `node` and that it watches, every 100 ms (its domain)."""
        return self._mesh.get(node, frozenset())

    def observers(self, node: str) -> frozenset[str]:
        """The K (or fewer) members outside its mesh whose agreement convicts `node`."""
        return self._observers.get(node, frozenset())

    def voters(self, node: str) -> frozenset[str]:
        """The members whose suspicion of `node` counts (ClusterView.corroborated):
        its observers and its mesh; in a full mesh, everyone else."""
        return self.observers(node) | self.mesh(node)

    def watchers(self, node: str, leader: str | None = None) -> frozenset[str]:
        """Who times `node`'s heartbeats: where `node` sends them."""
        if node not in self.domains:
            return frozenset()
        if node == leader:
            return frozenset(self.members) - {node}
        return self.mesh(node) | self.observers(node)

    def subjects(self, node: str, leader: str | None = None) -> frozenset[str]:
        """Whose heartbeats `node` times (the inverse of `watchers`)."""
        if node not in self.domains:
            return frozenset()
        key = (node, leader)
        if key not in self._subjects:
            out = self.mesh(node) | self._observes[node]
            if leader is not None and leader != node and leader in self.domains:
                out |= {leader}
            self._subjects[key] = out
        return self._subjects[key]

    def paced(self, sender: str, receiver: str, leader: str | None = None) -> bool:
        """Whether `sender` sends `receiver` only every `observer_every`th heartbeat:
        an observer outside the sender's mesh, unless the sender leads."""
        return sender != leader and receiver not in self.mesh(sender) and self.settings.observer_every > 1

    def need(self, node: str) -> int:
        """How many of `node`'s observers must suspect it to convict it cluster-wide."""
        k = len(self.observers(node))
        return max(1, math.ceil(self.settings.agreement * k / self.settings.observers)) if k else 0

    def domain_members(self, domain: str) -> frozenset[str]:
        return frozenset(m for m, d in self.domains.items() if d == domain)

    def lost_domains(self, failed_at: Mapping[str, float], window: float) -> dict[str, list[str]]:
        """The failure domains of two or more members that all failed within `window`
        seconds of each other (`failed_at`: node -> when it was marked failed): a
        rack's power or switch, reported as one event, not as its nodes one by one."""
        out = {}
        for d in sorted({self.domains[m] for m in failed_at if m in self.domains}):
            members = self.domain_members(d)
            if len(members) >= 2 and all(m in failed_at for m in members):
                times = [failed_at[m] for m in members]
                if max(times) - min(times) <= window:
                    out[d] = sorted(members)
        return out

    def load(self, node: str, leader: str | None = None) -> tuple[int, int]:
        """(peers `node` sends to, peers it hears): its heartbeat fan-out and fan-in."""
        return len(self.watchers(node, leader)), len(self.subjects(node, leader))
