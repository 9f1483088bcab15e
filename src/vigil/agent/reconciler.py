"""The reconciliation loop: read one snapshot, decide, act, say why.

Runs every `loop_interval`, and when the registry's watch sees a change
(vigil.agent.registry_watch: at once for the leader key, a switchover or a
fencing marker, within SETTLE for others) or a peer's liveness changes. Each
cycle's decision is logged when it changes and kept in `last` for
`/status`; tests assert on it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable, Protocol

from vigil.agent.registry_watch import RegistryWatch
from vigil.agent.snapshot_source import SnapshotSource
from vigil.agent.stewardship import Stewardship
from vigil.agent.stonith import Fencer
from vigil.agent.leadership import Leadership
from vigil.clock import Clock, woken
from vigil.config import NodeConfig
from vigil.core.health import Verdict
from vigil.core.peers import PeerTable
from vigil.core.reconcile import (Campaign, ClearLeaderKey, Decision, Demote, Fence, Resign, Wait, decide,
                                  handover)
from vigil.core.topology import Topology
from vigil.core.view import ClusterView
from vigil.errors import StoreError
from vigil.store.base import Store
from vigil.store.election import Election, remove_invalid
from vigil.store.keys import Keys
from vigil.store.mirror import RegistryMirror
from vigil.store.registry import Registry, Snapshot
from vigil.store.session import Session

log = logging.getLogger(__name__)

MAX_FAIL_DELAY = 10.0  # s between tries of a cycle that keeps raising
FENCE_CALLS, FENCE_TIMEOUT = 4, 10.0  # device calls per fence level; a device's timeout when none is set
BAD_REPORTS = 8  # bad_record events per cycle, each naming its key (then one saying how many more)


class SessionLink(Protocol):
    """What the reconciler reads of this node's registration in etcd: the session,
    replaced each time a lost lease is, its election, and whether our member
    record says our suspicions (vigil.agent.registration.Registration)."""

    @property
    def session(self) -> Session | None: ...
    @property
    def election(self) -> Election | None: ...
    def session_ok(self) -> bool: ...
    def etcd_answers(self, now: float) -> bool: ...
    def republish(self) -> None: ...  # publish our member record in the background, unless under way
    def suspects_unpublished(self) -> bool: ...


class Soundness:
    """Why this agent may not lead, whatever its node's probes say: what its
    watchdog reports, and its decision loop while that keeps failing (the
    reconciler says so here; the member record and /health read it)."""

    def __init__(self, watchdog: Callable[[], tuple[str, ...]]):
        self.watchdog = watchdog
        self.failing: str | None = None  # why the last cycle raised, while it keeps doing so

    def reasons(self) -> tuple[str, ...]:
        failing = self.failing
        return self.watchdog() + ((f"decision loop failing: {failing}",) if failing else ())


async def _nothing() -> None:
    return None


class Reconciler:
    def __init__(self, cfg: NodeConfig, clock: Clock, store: Store, keys: Keys, registry: Registry,
                 record: Any, leadership: Leadership, peers: PeerTable, link: SessionLink, soundness: Soundness,
                 wake: asyncio.Event, fencer: Fencer | None = None,
                 verdict: Callable[[], Verdict] = Verdict,
                 on_snapshot: Callable[[Snapshot], None] = lambda snap: None,
                 topology: Callable[[], Topology | None] = lambda: None):
        self.cfg, self.clock, self.store, self.keys, self.registry = cfg, clock, store, keys, registry
        self.record, self.leadership, self.peers, self.link, self.wake = record, leadership, peers, link, wake
        self.soundness, self.fencer, self.verdict = soundness, fencer, verdict
        self.on_snapshot = on_snapshot  # every snapshot a cycle reads (the heartbeat receiver's hints)
        self.topology = topology  # who watches whom (the heartbeat service's)
        self.stewardship = Stewardship(lambda: self.cfg, clock, store, keys, registry, record, leadership,
                                       self.invalidate_snapshot)
        self.last = Wait("starting")
        self.snapshot: Snapshot | None = None
        self.mirror = RegistryMirror(keys)
        self.watch = RegistryWatch(store, keys, self.mirror, self.wake.set, clock.now, cfg.node)
        self.source = SnapshotSource(registry, self.mirror, link.etcd_answers, cfg.timing.loop_interval, cfg.node)
        self.cycles = 0
        self.suspected: frozenset[str] = frozenset()  # as of the last cycle (ClusterView.suspected_for)
        self.convicted: frozenset[str] = frozenset()  # as of the last cycle (ClusterView.convicted)
        self.on_suspicion: list[Callable[[], None]] = []  # a member was suspected or convicted since the last cycle
        self._no_leader_since: float | None = None
        self._bad_seen: dict[str, str] = {}
        self._fail_delay = 0.0
        self.beat = clock.now()  # the decision loop's last sign of progress (systemd's watchdog)
        # A planned resignation (Resign.planned) quiesces the front door first and lifts its hold after
        # (vigil.agent.release); no-ops unless the agent sets them.
        self.before_resign: Callable[[], Awaitable[None]] = _nothing
        self.after_resign: Callable[[], None] = lambda: None

    @property
    def failing(self) -> str | None:
        """Why the last cycle raised, while it keeps doing so (None: the loop runs)."""
        return self.soundness.failing

    def stalled(self, now: float) -> bool:
        """The loop has made no progress for longer than a wait, a cycle's etcd calls, the
        longest back-off and the longest fence together can take: it is stuck in a cycle."""
        t = self.cfg.timing
        return now - self.beat > 2 * t.loop_interval + 4 * t.etcd_timeout + MAX_FAIL_DELAY + self._fence_budget

    @property
    def _fence_budget(self) -> float:
        """The longest a fence may take: every level of the slowest node's topology, each
        a power-off, a verification and a status call (FENCE_CALLS) within its timeout."""
        f = self.cfg.fencing
        if not f:
            return 0.0
        return max((sum(FENCE_CALLS * float(d.get("timeout", FENCE_TIMEOUT)) for d in levels)
                    for levels in f.topology.values()), default=0.0)

    async def loop(self) -> None:
        while True:
            self.beat = self.clock.now()
            await woken(self.wake, self.cfg.timing.loop_interval)
            self.wake.clear()
            self.beat = self.clock.now()
            self.watch.cycle_started(self.beat)
            try:
                await self.run_cycle()
                self._recovered()
            except StoreError as e:
                self._set(Wait(f"etcd unreachable ({e}); leadership valid for "
                               f"{self.leadership.remaining():.1f} s more"))
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one bad cycle
                await self._failed(e)

    async def _failed(self, e: Exception) -> None:
        """A cycle raised: report it, stay unhealthy (never a candidate) while it
        keeps failing, and back off so a persistent fault does not spin."""
        what = f"{type(e).__name__}: {e}"
        log.exception("decision cycle failed")
        if self.soundness.failing != what:
            self.record("decision_loop_failed", f"the decision loop failed: {what}; "
                                     "this node reports itself unhealthy until a cycle succeeds")
        self.soundness.failing = what
        self._set(Wait(f"cycle failed: {what}"))
        self._fail_delay = min(MAX_FAIL_DELAY, self._fail_delay * 2 if self._fail_delay else 0.5)
        await asyncio.sleep(self._fail_delay)

    def _recovered(self) -> None:
        if self.soundness.failing:
            self.record("decision_loop_recovered", f"the decision loop runs again "
                                     f"(it failed with {self.soundness.failing})")
        self.soundness.failing, self._fail_delay = None, 0.0

    async def watch_loop(self) -> None:
        """Keep the mirror up to date and wake the loop (vigil.agent.registry_watch)."""
        await self.watch.run()

    def invalidate_snapshot(self, revision: int | None = None) -> None:
        """We wrote at `revision` (the next snapshot holds it), or our role changed or a
        write's outcome is unknown (None: the next cycle reads etcd; vigil.agent.snapshot_source)."""
        if revision is None:
            self.source.invalidate()
        else:
            self.source.wrote(revision)

    async def run_cycle(self) -> Decision:
        if self.link.suspects_unpublished():  # a publish failed (etcd away): peers need it to fence
            self.link.republish()
        snap = await self.source.get(self.clock.now())
        if await self._abandon_stale_fences(snap):
            snap = await self.registry.snapshot()
        self.snapshot = snap
        self.on_snapshot(snap)
        self._report_bad_records(snap)
        view = self.view(snap)
        self._note_verdicts(frozenset(view.suspected_for), view.convicted())
        if self.fencer:
            self.fencer.follow(view.leader.name if view.leader else None)
        decision = decide(view)
        self._set(decision)
        if not isinstance(decision, Wait):
            self.invalidate_snapshot()
        await self._perform(decision, view)
        if self.leadership.is_leader() and not isinstance(decision, Fence):  # after a fence the view is stale
            await self.stewardship.keep(view, self.snapshot)
        self.cycles += 1
        return decision

    def _note_verdicts(self, suspected: frozenset[str], convicted: frozenset[str]) -> None:
        fresh = suspected - self.suspected or convicted - self.convicted
        self.suspected, self.convicted = suspected, convicted
        if fresh:
            for hook in self.on_suspicion:
                hook()

    def _report_bad_records(self, snap: Snapshot) -> None:
        """Each record no Vigil component wrote (vigil.store.records) is an event
        once per key and problem while it stands, logged with it; the record
        itself is left out of every decision. At most BAD_REPORTS per cycle are
        events of their own: a writer of thousands of bad keys gets one more
        event saying how many, not thousands of events from every agent."""
        new = {k: p for k, p in snap.bad_records.items() if self._bad_seen.get(k) != p}
        for i, (key, problem) in enumerate(sorted(new.items())):
            self._bad_seen[key] = problem
            if i < BAD_REPORTS:
                log.warning("ignoring record %s: %s", key, problem)
                self.record("bad_record", f"{key}: {problem}; ignored until its owner "
                                         "rewrites it (or delete the key)", key=key)
        if len(new) > BAD_REPORTS:
            self.record("bad_record", f"{len(new) - BAD_REPORTS} more records no Vigil component wrote, "
                                      "each ignored (`vigil status` lists them)", key="", more=len(new) - BAD_REPORTS)
        for key in set(self._bad_seen) - set(snap.bad_records):  # fixed or gone: said again if it recurs
            del self._bad_seen[key]

    async def _abandon_stale_fences(self, snap: Snapshot) -> bool:
        """Our in-progress fencing markers whose fence is no longer in flight (a cycle
        runs only between fences): an attempt cut short by an etcd error, or a marker
        write that timed out here and was committed later. Left alone they would hold
        every node back forever; the next cycle fences again if it still must."""
        finishing = self.fencer.completing if self.fencer else set()
        stale = {n: rev for n, (by, rev) in snap.fence_attempts.items() if by == self.cfg.node and n not in finishing}
        for node, rev in stale.items():
            if await self.registry.abandon_fencing(node, rev):
                self.record("fencing_abandoned", f"removed the marker of an interrupted fence of "
                                f"{node}; it will be fenced again if it still must", subject=node)
        return bool(stale)

    def view(self, snap: Snapshot) -> ClusterView:
        session = self.link.session
        now = self.clock.now()
        verdict, reasons = self.verdict(), self.soundness.reasons()
        if snap.leader is None:
            self._no_leader_since = self._no_leader_since or now
        else:
            self._no_leader_since = None
        return ClusterView(
            me=self.cfg.node, now=now, session_ok=self.link.session_ok(),
            my_lease=session.lease_id if session else 0, i_lead=self.leadership.is_leader(),
            my_token=self.leadership.token, healthy=not reasons, health_reasons=reasons,
            verdict=verdict.state, verdict_reasons=verdict.reasons,
            leader=snap.leader, members=snap.member_infos(), states=snap.states,
            switchover=snap.switchover, unheard=frozenset(self.peers.unheard()),
            no_leader_for=now - self._no_leader_since if self._no_leader_since else 0.0,
            campaign_grace=self.cfg.timing.loop_interval,
            fenceable=frozenset(self.cfg.fencing.topology) if self.cfg.fencing else frozenset(),
            fence_blocked=snap.fence_blocked,
            suspected_for=self.peers.suspected_for(now), heard_suspects=self.peers.heard_suspicions(),
            race_delay=self.cfg.fencing.race_delay if self.cfg.fencing else 0.0,
            cluster_size=len(self.cfg.peers) + 1, ring=frozenset(self.cfg.keys.ring.members),
            topology=self.topology())

    def _set(self, decision: Decision) -> None:
        if decision != self.last:
            log.info("decision: %s", decision)
        self.last = decision

    async def _perform(self, d: Decision, view: ClusterView) -> None:
        """Run the decision: one small runner per type (Wait does nothing)."""
        runners = {Campaign: self._campaign_for, Resign: self._resign, Demote: self._demote, Fence: self._fence,
                   ClearLeaderKey: self._clear_leader_key}
        runner = runners.get(type(d))
        if runner is not None:
            await runner(d, view)

    async def _campaign_for(self, d: Campaign, view: ClusterView) -> None:
        await self._campaign(view)

    async def _resign(self, d: Resign, view: ClusterView) -> None:
        if d.planned:
            await self.before_resign()
        self.leadership.resign(d.reason)
        election = self.link.election
        try:
            if election:
                await election.resign(d.token)
        finally:
            if d.planned:
                self.after_resign()

    async def _clear_leader_key(self, d: ClearLeaderKey, view: ClusterView) -> None:
        # Every node that sees the key tries; the guarded delete lets exactly one win, whose
        # event is the alarm (a key rewritten again is judged and removed again).
        if await remove_invalid(self.store, self.keys.leader, d.target):
            self.record("leader_key_invalid", d.reason, subject=d.target.name, token=d.target.token,
                        lease=f"{d.target.lease:x}")

    async def _demote(self, d: Demote, view: ClusterView) -> None:
        self.leadership.lose(d.reason)

    async def _fence(self, d: Fence, view: ClusterView) -> None:
        if self.fencer is None:
            return
        session = self.link.session
        if session:  # renewed while the fence runs: the takeover's deadline (and VIP lifetime) is fresh
            session.renew_now()
        if await self.fencer.fence_leader(d.target, d.reason, session.lease_id if session else 0):
            await self._campaign(view)

    async def _campaign(self, view: ClusterView) -> None:
        election, session = self.link.election, self.link.session
        if election is None or session is None or not self.link.session_ok():
            return
        token = await election.try_campaign()
        if not token:
            return
        await self._handover_barrier(token)
        # What the leader holds (VIPs, token file, the actuator writer) starts in the acquisition
        # (vigil.agent.leadership). A switchover request is the operator's to remove (`vigil
        # switchover` revokes its lease once the target leads, else it expires): a node's etcd
        # role may not write it.
        if not self.leadership.acquire(token, session.last_ack_sent):
            await election.resign(token)  # the lease was renewed too long ago to act on
            return
        self.wake.set()

    async def _handover_barrier(self, token: int) -> None:
        """Act on a fresh token only once `handover()` says so: wait for the
        heartbeat news (or the suspicion) that wakes this loop, not by polling."""
        t0 = self.clock.now()
        first = None
        while (d := handover(token, self.peers.claiming_leader(), self.clock.now(),
                             t0 + self.cfg.timing.demote_after)) is not None:
            self._set(d)
            first = first or d
            self.wake.clear()
            try:
                async with asyncio.timeout(max(0.0, d.until - self.clock.now())):
                    await self.wake.wait()
            except TimeoutError:
                pass
        if first is None:
            return
        still = self.peers.claiming_leader()
        self.record("handover_wait", f"won token {token} while {', '.join(first.peers)} still announced "
                        f"itself leader; waited {(self.clock.now() - t0) * 1000:.0f} ms before acting"
                        + (f" ({', '.join(still)} never stopped: acting at its self-demotion deadline)"
                           if still else ""), token=token, peers=list(first.peers))
