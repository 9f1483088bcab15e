"""The large-cluster schedule (issue 24): hundreds to a thousand real agents
in one SimCluster, through the detection topology, under the faults a big
cluster meets, each held long enough to be detected, and measured.

Faults, in a seeded order that takes every kind in turn (so a 10-minute run
has each at least once): the leader killed; a node killed; a whole rack
killed at once (its power); a rack cut off from every other node and from
etcd (its switch); a node paused past its lease TTL; a node cut from its
peers. A kill is held for 2x the detection target before the node restarts.

Measured, by a monitor that reads the store every MONITOR_S virtual seconds
(what an operator's `vigil status` would read):
- detection: for every killed node, the time from the kill to the leader's
  `failed` state for it (cluster-wide: every agent reads that state);
  target `suspicion_time + heartbeat_interval + tick` (the observers'
  detectors, their verdict reaching the leader with their next heartbeat,
  the leader's next evaluation; 0.35 s with the product's 100 ms timers);
- leader again: after each fault that took the leader (killed, or in a rack
  cut off), the time until a live node outside the cut holds the leader key;
- the longest time with no leader key at all.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field
from typing import Any

from vigil.testing.sim_cluster import SIM_TICK, SimCluster, SimResult
from vigil.store.keys import Keys
from vigil.testing.sim_loop import KILLED

MONITOR_S = 0.5
KINDS = ("kill_leader", "kill", "lose_rack", "cut_rack", "stop_past_ttl", "cut_peers")


@dataclass
class LargeResult:
    sim: SimResult
    target_s: float
    detections: list[dict[str, Any]] = field(default_factory=list)  # {kind, node, at, seconds|None}
    leader_again: list[float | None] = field(default_factory=list)  # s after each fault that took the leader
    longest_leaderless_s: float = 0.0

    def detection_summary(self) -> dict[str, Any]:
        secs = sorted(d["seconds"] for d in self.detections if d["seconds"] is not None)
        missed = [d["node"] for d in self.detections if d["seconds"] is None]
        return {"killed": len(self.detections), "detected": len(secs), "missed": missed,
                "p50_s": round(statistics.median(secs), 2) if secs else None,
                "max_s": round(secs[-1], 2) if secs else None, "target_s": round(self.target_s, 2),
                "within_target": sum(s <= self.target_s for s in secs)}


class LargeSimCluster(SimCluster):
    def __init__(self, seed: int, root: Any, nodes: int, rack_size: int, **kw: Any):
        super().__init__(seed, root, nodes=nodes, rack_size=rack_size, **kw)
        self.keys = Keys("sim")
        self.racks: dict[str, list[str]] = {}
        for name, node in self.nodes.items():
            self.racks.setdefault(node.cfg.failure_domain, []).append(name)
        t = next(iter(self.nodes.values())).cfg.timing
        self.target = t.suspicion_time + t.heartbeat_interval + SIM_TICK
        self._killed_at: dict[str, tuple[str, float, int]] = {}  # node -> (fault, when, store revision)
        self.detections: list[dict[str, Any]] = []
        self.leader_again: list[float | None] = []
        self._leader_lost_at: float | None = None
        self._cut: set[str] = set()  # nodes of a rack cut off now
        self._leaderless_since: float | None = None
        self.longest_leaderless = 0.0

    def run_large(self, seconds: float, quiet: float = 30.0) -> LargeResult:
        r = self.run(seconds, quiet)
        for name, (kind, at, _) in self._killed_at.items():  # still down and never detected
            self.detections.append({"kind": kind, "node": name, "at": round(at - 1000, 1), "seconds": None})
        if self._leader_lost_at is not None:
            self.leader_again.append(None)
        return LargeResult(r, self.target, self.detections, self.leader_again, self.longest_leaderless)

    # -- the schedule --------------------------------------------------------------
    async def _faults(self, until: float) -> None:
        order = list(KINDS)
        self.rng.shuffle(order)
        await self._formed(deadline=self.clock.now() + 10 * self.target)
        monitor = asyncio.get_running_loop().create_task(self._monitor())
        i = 0
        while self.clock.now() < until:
            await self._inject_large(order[i % len(order)])
            i += 1
            await asyncio.sleep(self.rng.uniform(5.0, 20.0))
        await asyncio.sleep(self.target)
        monitor.cancel()

    async def _inject_large(self, kind: str) -> None:
        hold = 2 * self.target
        leader = self._leader_name()
        if kind == "kill_leader":
            if leader is None:  # between terms: nothing to kill, and no other fault in its name
                self._fault("skipped: kill_leader with no leader")
                return
            self._fault(f"kill_leader {leader} for {hold:.2f} s")
            await self._kill_for([leader], kind, hold)
        elif kind in ("kill", "stop_past_ttl", "cut_peers"):
            name = self.rng.choice(self._standby([n for n in self.nodes if n != leader]))
            if kind == "kill":
                self._fault(f"kill {name} for {hold:.2f} s")
                await self._kill_for([name], kind, hold)
            else:
                await self._inject(name, kind)
        else:
            most = max(len(self._standby(names, strict=True)) for names in self.racks.values())
            rack = self.rng.choice(sorted(r for r, names in self.racks.items()
                                          if len(self._standby(names, strict=True)) == most))
            names = self.racks[rack]
            self._fault(f"{kind} {rack} ({len(names)} nodes{', the leader' if leader in names else ''}) "
                        f"for {hold:.2f} s")
            if kind == "lose_rack":
                await self._kill_for(names, kind, hold)
            else:
                await self._cut_off(names, hold)

    async def _kill_for(self, names: list[str], kind: str, hold: float) -> None:
        now = self.clock.now()
        for name in names:
            if self.nodes[name].proc.state != KILLED:
                if self._state(name) != "failed":  # one still `failed` from the last fault is not detected again
                    self._killed_at[name] = (kind, now, self.store.revision)
                self.kill(name)
        await asyncio.sleep(hold)
        for name in names:
            missed = self._killed_at.pop(name, None)
            if missed:
                self.detections.append({"kind": kind, "node": name, "at": round(now - 1000, 1), "seconds": None})
            self.start(name)

    async def _cut_off(self, names: list[str], hold: float) -> None:
        """A rack's switch fails: its nodes reach neither etcd nor any node outside it."""
        inside = set(names)
        self._cut |= inside
        for name in names:
            self.nodes[name].link.reachable = False
            for other in self.nodes:
                if other not in inside:
                    self.network.cut(self.nodes[name].cfg.addresses[0], self.nodes[other].cfg.addresses[0])
        await asyncio.sleep(hold)
        for name in names:
            self.nodes[name].link.reachable = True
        self.network.heal()
        self._cut -= inside

    async def _formed(self, deadline: float) -> None:
        """Until a leader holds the key and the leader has marked every node: the
        schedule faults a cluster that stands (a generous deadline: it faults one
        that does not form, too, and the run shows it)."""
        while self.clock.now() < deadline:
            if self._leader_name() and all(self._state(n) in ("standby", "active") for n in self.nodes):
                return
            await asyncio.sleep(MONITOR_S)  # virtual time: the monitor's poll of the store

    def _standby(self, names: list[str], strict: bool = False) -> list[str]:
        """Those of `names` the leader has marked standby: up and serving, as a fault
        finds a node (a node back from a fault may stay `failed` until its observers
        have heard it `rise` times at their pace); all of them if none is, unless `strict`."""
        ready = [n for n in names if self._state(n) == "standby"]
        return sorted(ready or ([] if strict else names))

    def _state(self, name: str) -> str | None:
        kv = self.store.peek(self.keys.state(name))
        return kv.value if kv else None

    # -- the monitor ---------------------------------------------------------------
    def _leader_name(self) -> str | None:
        kv = self.store.peek(self.keys.leader)
        return kv.value if kv else None

    async def _monitor(self) -> None:
        while True:
            now = self.clock.now()
            for name, (kind, at, rev) in list(self._killed_at.items()):
                kv = self.store.peek(self.keys.state(name))
                if kv and kv.value == "failed" and kv.mod_revision > rev:  # written since the kill
                    self.detections.append({"kind": kind, "node": name, "at": round(at - 1000, 1),
                                            "seconds": round(now - at, 2)})
                    del self._killed_at[name]
            self._follow_leader(now)
            await asyncio.sleep(MONITOR_S)

    def _follow_leader(self, now: float) -> None:
        leader = self._leader_name()
        alive = (leader is not None and leader in self.nodes and self.nodes[leader].proc.state != KILLED
                 and leader not in self._cut)  # a cut-off leader is gone for the cluster from the cut on
        if not alive and self._leader_lost_at is None:
            self._leader_lost_at = now
        elif alive and self._leader_lost_at is not None:
            self.leader_again.append(round(now - self._leader_lost_at, 2))
            self._leader_lost_at = None
        if leader is None:
            self._leaderless_since = self._leaderless_since or now
            self.longest_leaderless = max(self.longest_leaderless, now - self._leaderless_since)
        else:
            self._leaderless_since = None
