"""The leader's stewardship of the other nodes' records: flap-damping holds
(vigil.core.damping), the node states decide_states wants, one `domain_lost`
event for a failure domain that fails at once (vigil.core.topology), and
pruning the event log. Run once per cycle by the leader's reconciler, which
owns the snapshot; every write first invalidates it (the next cycle reads
anew)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Awaitable, Callable

from vigil.agent.leadership import Leadership
from vigil.clock import Clock
from vigil.config import NodeConfig
from vigil.core.damping import FlapDamper
from vigil.core.reconcile import decide_states
from vigil.core.view import ACTIVE, FAILED, HELD, STANDBY, ClusterView
from vigil.store.base import Store
from vigil.store.events import prune_events
from vigil.store.keys import Keys
from vigil.store.registry import Registry, Snapshot

EVENTS_KEEP = 2000
PRUNE_EVERY = 30.0
DOMAIN_WINDOW = 10.0  # s: members of one failure domain failing within this are one event


class Stewardship:
    def __init__(self, cfg: Callable[[], NodeConfig], clock: Clock, store: Store, keys: Keys,
                 registry: Registry, record: Any, leadership: Leadership,
                 invalidate_snapshot: Callable[[int | None], None]):
        """`cfg`: the running configuration (a reload replaces the reconciler's)."""
        self.cfg, self.clock, self.store, self.keys, self.registry = cfg, clock, store, keys, registry
        self.record, self.leadership, self.invalidate_snapshot = record, leadership, invalidate_snapshot
        self.damper = FlapDamper(cfg().health.damping)
        self._holds_written: set[str] = set()
        self._failed_at: dict[str, float] = {}  # node -> when the leader first saw it failed
        self._lost_domains: set[str] = set()  # reported, until a member is back
        self._last_prune = 0.0

    async def _write(self, write: Awaitable[int | None]) -> None:
        """One write of ours, which the next cycle's snapshot must hold: the mirror once
        it has the write's revision; a range read when the write gives none (a delete)
        or its outcome is unknown (it raised)."""
        try:
            revision = await write
        except BaseException:
            self.invalidate_snapshot(None)
            raise
        self.invalidate_snapshot(revision if type(revision) is int else None)

    async def _held_out(self, now: float, snap: Snapshot | None) -> dict[str, str]:
        """Flap damping: new holds are written to etcd (a new leader keeps them), ended
        ones deleted; a hold this leader wrote that is gone was released by an operator
        (`vigil resume`): that node's failure count starts from zero."""
        holds, wall = dict(snap.holds if snap else {}), self.clock.wall()
        fresh = self.damper.held(now, len(self.cfg().peers) + 1, self.cfg().domains())
        for node in list(fresh):
            if node in self._holds_written and node not in holds:
                self.damper.clear(node)
                del fresh[node]
                self._holds_written.discard(node)
                self.record("flap_damping_cleared", f"{node} put back by an operator; its failure count "
                            "starts from zero", subject=node)
            elif node not in holds:
                until = wall + self.damper.release_in(node, now)
                await self._write(self.registry.hold(node, until, fresh[node]))
                holds[node] = {"until": until, "why": fresh[node]}
                self._holds_written.add(node)
        for node, rec in list(holds.items()):
            if rec["until"] <= wall:  # ended by time, not by an operator
                await self._write(self.registry.release_hold(node))
                del holds[node]
                self._holds_written.discard(node)
        return {n: r["why"] for n, r in holds.items()}

    def _report_lost_domains(self, view: ClusterView, wanted: dict[str, str]) -> None:
        """A whole failure domain failing within DOMAIN_WINDOW is one `domain_lost` event."""
        if view.topology is None:
            return
        now = self.clock.now()
        states = {**view.states, **wanted}
        for node, state in states.items():
            if state == FAILED:
                self._failed_at.setdefault(node, now)
            else:
                self._failed_at.pop(node, None)
        lost = view.topology.lost_domains(self._failed_at, DOMAIN_WINDOW)
        self._lost_domains &= set(lost)  # a domain back in part may be lost again later
        for domain in sorted(set(lost) - self._lost_domains):
            self._lost_domains.add(domain)
            self.record("domain_lost", f"failure domain {domain} lost at once: {', '.join(lost[domain])} "
                        "(a rack's power or switch?); their work moves to other domains",
                        subject=domain, nodes=lost[domain])

    async def keep(self, view: ClusterView, snap: Snapshot | None) -> None:
        """One leader cycle's upkeep: holds, node states (and lost domains), pruning.
        Stops writing states the moment this node no longer leads."""
        now = self.clock.now()
        held = await self._held_out(now, snap)
        wanted = decide_states(replace(view, i_lead=True, held_out=held))
        self._report_lost_domains(view, wanted)
        for node, state in wanted.items():
            if not self.leadership.is_leader():
                return
            await self._write(self.registry.set_state(node, state))
            if state == FAILED and view.states.get(node) in (ACTIVE, STANDBY, HELD):
                self.damper.failed(node, now)
            why = f": {held[node]}" if state == HELD else ""
            self.record("state_changed", f"{node} is now {state}{why}", subject=node, state=state,
                        previous=view.states.get(node))
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            await prune_events(self.store, self.keys, EVENTS_KEEP)
