"""The reconciliation loop: read one snapshot, decide, act, say why.

Runs every `loop_interval`, and at once when the watch sees a change under
the cluster prefix (other than events) or a peer's liveness changes. Each
cycle's decision is logged when it changes and kept in `last` for
`/status`; tests assert on it.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
import logging
from typing import TYPE_CHECKING

from vigil.core.reconcile import (CAMPAIGN, DEMOTE, FENCE, NONE, RESIGN, Decision, decide,
                                  decide_states)
from vigil.core.view import ClusterView
from vigil.errors import StoreError, WatchCompacted
from vigil.agent.fence import fence_leader
from vigil.store.events import prune_events
from vigil.store.registry import Snapshot

if TYPE_CHECKING:
    from vigil.agent.daemon import Agent

log = logging.getLogger(__name__)

EVENTS_KEEP = 2000
PRUNE_EVERY = 30.0


class Reconciler:
    def __init__(self, agent: "Agent"):
        self.agent = agent
        self.last = Decision(NONE, "starting")
        self.snapshot: Snapshot | None = None
        self.cycles = 0
        self._no_leader_since: float | None = None
        self._last_prune = 0.0
        self._bad_seen: dict[str, str] = {}
        self.failing: str | None = None  # why the last cycle raised, while it keeps doing so
        self._fail_delay = 0.0

    async def loop(self) -> None:
        a = self.agent
        while True:
            try:
                await asyncio.wait_for(a.wake.wait(), a.cfg.timing.loop_interval)
            except asyncio.TimeoutError:
                pass
            a.wake.clear()
            try:
                await self.run_cycle()
                self._recovered()
            except StoreError as e:
                self._set(Decision(NONE, f"etcd unreachable ({e}); leadership valid for "
                                         f"{a.role.remaining(a.clock.now()):.1f} s more"))
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one bad cycle
                await self._failed(e)

    async def _failed(self, e: Exception) -> None:
        """A cycle raised: report it, stay unhealthy (never a candidate) while it
        keeps failing, and back off so a persistent fault does not spin."""
        what = f"{type(e).__name__}: {e}"
        log.exception("decision cycle failed")
        if self.failing != what:
            self.agent.events.record("decision_loop_failed", f"the decision loop failed: {what}; "
                                     "this node reports itself unhealthy until a cycle succeeds")
        self.failing = what
        self._set(Decision(NONE, f"cycle failed: {what}"))
        self._fail_delay = min(10.0, self._fail_delay * 2 if self._fail_delay else 0.5)
        await asyncio.sleep(self._fail_delay)

    def _recovered(self) -> None:
        if self.failing:
            self.agent.events.record("decision_loop_recovered", f"the decision loop runs again "
                                     f"(it failed with {self.failing})")
        self.failing, self._fail_delay = None, 0.0

    async def watch_loop(self) -> None:
        """Wake the loop on every change under the cluster prefix but events."""
        a = self.agent
        events_prefix = a.keys.events
        while True:
            try:
                _, rev = await a.store.range(a.keys.leader, a.keys.leader + "\0")
                async for ev in a.store.watch(a.keys.prefix, rev + 1):
                    if not ev.key.startswith(events_prefix):
                        a.wake.set()
            except (StoreError, WatchCompacted) as e:
                log.debug("watch restarting: %s", e)
                await asyncio.sleep(0.1)

    async def run_cycle(self) -> Decision:
        a = self.agent
        if a.suspects_unpublished():  # a publish failed (etcd away): peers need it to fence
            await a.publish_record()
        snap = await a.registry.snapshot()
        if await self._abandon_stale_fences(snap):
            snap = await a.registry.snapshot()
        self.snapshot = snap
        self._report_bad_records(snap)
        view = self.view(snap)
        decision = decide(view)
        self._set(decision)
        await self._perform(decision, view)
        if a.is_leader() and decision.action != FENCE:  # after a fence the view is stale: next cycle
            await self._leader_housekeeping(view)
        self.cycles += 1
        return decision

    def _report_bad_records(self, snap: Snapshot) -> None:
        """Each malformed member record is an event once (per key and problem);
        the record itself is left out of every decision."""
        for key, problem in snap.bad_records.items():
            if self._bad_seen.get(key) != problem:
                self._bad_seen[key] = problem
                self.agent.events.record("bad_record", f"{key}: {problem}; ignored until its owner "
                                         "rewrites it (or delete the key)", key=key)

    async def _abandon_stale_fences(self, snap: Snapshot) -> bool:
        """Our in-progress fencing markers whose fence is no longer in flight (a cycle
        runs only between fences): an attempt cut short by an etcd error, or a marker
        write that timed out here and was committed later. Left alone they would hold
        every node back forever; the next cycle fences again if it still must."""
        a = self.agent
        stale = {n: rev for n, (by, rev) in snap.fence_attempts.items() if by == a.cfg.node}
        for node, rev in stale.items():
            if await a.registry.abandon_fencing(node, rev):
                a.events.record("fencing_abandoned", f"removed the marker of an interrupted fence of "
                                f"{node}; it will be fenced again if it still must", subject=node)
        return bool(stale)

    def view(self, snap: Snapshot) -> ClusterView:
        a = self.agent
        now = a.clock.now()
        if snap.leader is None:
            self._no_leader_since = self._no_leader_since or now
        else:
            self._no_leader_since = None
        return ClusterView(
            me=a.cfg.node, now=now, session_ok=a.session_ok(),
            my_lease=a.session.lease_id if a.session else 0, i_lead=a.is_leader(),
            my_token=a.role.token, healthy=a.healthy, health_reasons=a.health_reasons,
            leader=snap.leader, members=snap.member_infos(), states=snap.states,
            switchover=snap.switchover, suspected=frozenset(a.heartbeats.peers.suspected()),
            no_leader_for=now - self._no_leader_since if self._no_leader_since else 0.0,
            campaign_grace=a.cfg.timing.loop_interval,
            fenceable=frozenset(a.cfg.fencing.topology) if a.cfg.fencing else frozenset(),
            fence_blocked=snap.fence_blocked,
            suspected_for=a.heartbeats.peers.suspected_for(now),
            race_delay=a.cfg.fencing.race_delay if a.cfg.fencing else 0.0,
            cluster_size=len(a.cfg.peers) + 1)

    def _set(self, decision: Decision) -> None:
        if decision != self.last:
            log.info("decision: %s", decision)
        self.last = decision

    async def _perform(self, d: Decision, view: ClusterView) -> None:
        a = self.agent
        if d.action == CAMPAIGN:
            await self._campaign(view)
        elif d.action == RESIGN:
            change = a.role.resigned(a.clock.now(), d.reason)
            if change:
                a.record_role_change(change)
            if view.leader and a.election:
                await a.election.resign(view.leader.token)
        elif d.action == DEMOTE:
            change = a.role.lost(a.clock.now(), d.reason)
            if change:
                a.record_role_change(change)
        elif d.action == FENCE and view.leader:
            if await fence_leader(a, view.leader, d.reason):
                await self._campaign(view)

    async def _campaign(self, view: ClusterView) -> None:
        a = self.agent
        if a.election is None or not a.session_ok():
            return
        token = await a.election.try_campaign()
        if not token:
            return
        await self._handover_barrier(token)
        change = a.role.acquired(token, a.session.last_ack_sent, a.clock.now())
        if not a.role.is_leader(a.clock.now()):
            # The lease was renewed too long ago to act on: give the key back.
            a.role.resigned(a.clock.now(), "lease too old to lead on")
            await a.election.resign(token)
            return
        a.record_role_change(change)
        if view.switchover and view.switchover.to == a.cfg.node:
            await a.registry.clear_switchover()
        if a.controller:
            a.controller.leading(token)
        a.wake.set()

    async def _handover_barrier(self, token: int) -> None:
        """Holding a fresh token, wait to act while a live peer still announces
        itself leader in its heartbeats, for at most `demote_after`: that peer
        cannot renew a lease that is gone, so it demotes itself by then. This
        never happens when etcd keeps its lease contract; it does with etcd
        before 3.4.28 / 3.5.11, whose raft leader, resumed after a stall,
        revokes leases its successor was renewing (etcd issues #12528,
        #15247), and the chaos harness caught the old leader still acting for
        the few milliseconds its watch took to tell it."""
        a = self.agent
        claimants = a.heartbeats.peers.claiming_leader()
        if not claimants:
            return
        t0 = a.clock.now()
        deadline = t0 + a.cfg.timing.demote_after
        while a.heartbeats.peers.claiming_leader() and a.clock.now() < deadline:
            await asyncio.sleep(0.005)
        still = a.heartbeats.peers.claiming_leader()
        a.events.record("handover_wait", f"won token {token} while {', '.join(claimants)} still announced "
                        f"itself leader; waited {(a.clock.now() - t0) * 1000:.0f} ms before acting"
                        + (f" ({', '.join(still)} never stopped: acting at its self-demotion deadline)"
                           if still else ""), token=token, peers=claimants)

    async def _leader_housekeeping(self, view: ClusterView) -> None:
        a = self.agent
        leader_view = replace(view, i_lead=True)
        for node, state in decide_states(leader_view).items():
            if not a.is_leader():
                return
            await a.registry.set_state(node, state)
            a.events.record("state_changed", f"{node} is now {state}", subject=node, state=state,
                            previous=view.states.get(node))
        now = a.clock.now()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            await prune_events(a.store, a.keys, EVENTS_KEEP)
