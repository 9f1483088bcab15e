"""HeartbeatService: sends our heartbeats, feeds peers' into the PeerTable,
and looks at the detectors through the local-pause guard.

Timing contract: heartbeats leave every `heartbeat_interval`; the detectors
are evaluated at the first peer's deadline, the instant its phi would cross
the threshold (vigil.net.watch_loop), and at least every `tick` seconds
(100 ms), so a suspicion is noticed when it is due. When this process's own
loop looked later than it promised by more than `pause_tolerance`, that
lateness is forgiven on every peer before judging them (a stalled observer
must not convict its peers).

Each heartbeat lists the peers its sender suspects (vigil.net.wire), and a
change of our own suspicions is sent at once, not at the next interval: a
standby deciding whether to fence learns that the others agree within a
packet's flight, not after their member records pass through etcd.

Whom we hear and whom we send to follow the detection topology
(vigil.core.topology): everyone in a cluster of up to 16, else our failure
domain's mesh, the nodes we observe and the leader; we send to our mesh,
our observers and, while we lead, to everyone. `follow(leader)` re-plans
when the leader changes (the reconciler calls it every cycle); a peer we
stop watching is forgotten and one we start watching starts `unknown`.
Packets from a tracked member we do not watch are authenticated and dropped.
Our observers outside the mesh get every `observer_every`th heartbeat
(Topology.paced) and time it with a detector of that pace; a leader sends
everyone every heartbeat, and for PACE_GRACE after it steps down.

With `heartbeat.realtime` configured, a small thread sends the scheduled
heartbeats and stamps each arriving datagram (vigil.net.pacer, at SCHED_FIFO:
vigil.realtime): it reads only what this loop replaces whole (`_suspects`,
our suspicions as last looked at; the links and keys), and everything else
(verification, the detectors, news) stays on this loop, judged at the
arrival times the thread took.

A peer whose clock is off by more than `heartbeat.max_clock_skew` is an
alarm, not a suspicion: its authentic heartbeats keep it alive
(vigil.net.transport), and one `clock_skew` event is recorded when it starts
and one `clock_skew_cleared` when it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import secrets
from typing import Any, Callable

from vigil.agent.status import HeartbeatState
from vigil.clock import Clock
from vigil.config import NodeConfig
from vigil.heartbeat_keys import HeartbeatKeys
from vigil.identity import PairKeys
from vigil.core.peers import TICK, PeerTable, PeerTransition, PeerWatch
from vigil.core.topology import Topology, TopologySettings
from vigil.net.pacer import Pacer
from vigil.net.transport import HeartbeatReceiver, HeartbeatTransport
from vigil.net.watch_loop import WatchLoop
from vigil.net.wire import Heartbeat
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)
# s: a leader that steps down keeps sending every heartbeat to its observers this long;
# they expect its leader's pace until their next snapshot names the new leader.
PACE_GRACE = 5.0
# s: the heartbeat thread sends only while the loop has looked at its peers this recently.
# A loop that has not for this long is hung, not busy (the worst wake-up of a normal thread
# measured under stress-ng here: 37 ms), and the node must not look alive for it.
LOOP_STALE = 2.0


class HeartbeatService:
    def __init__(self, cfg: NodeConfig, clock: Clock, incarnation: int,
                 on_transitions: Callable[[list[PeerTransition]], None],
                 status: Callable[[], tuple[str, str]], on_news: Callable[[], None] = lambda: None,
                 network: Any = None, tick: float = TICK,
                 record: Callable[..., Any] = lambda kind, cause, **details: None, pacer: Pacer | None = None):
        """`pacer`: the heartbeat thread that sends, receives and stamps (None: this loop does)."""
        self.cfg, self.clock, self.incarnation = cfg, clock, incarnation
        self.pacer = pacer
        # Our suspicions, noted at every transition: what each heartbeat lists (read by
        # the heartbeat thread too, so replaced whole, never changed in place).
        self._suspects: tuple[str, ...] = ()
        self._beats = itertools.count()
        self._looked_at = clock.now()  # when the loop last looked at its peers
        self.withheld = 0  # scheduled heartbeats the thread did not send: the loop was hung
        self.withheld_since = 0.0  # when the current withholding began (0: not withholding)
        self.on_transitions, self.status, self.on_news = on_transitions, status, on_news
        self.topology = Topology(cfg.domains(), cfg.topology)
        self.leader: str | None = None
        self.peers = PeerTable([], cfg.timing.detector(), cfg.timing.rise)
        self._slow: frozenset[str] = frozenset()  # watchers sent every observer_every-th heartbeat
        self._fast_until = 0.0  # a leader that stepped down sends everyone every heartbeat until then
        self._peer_cfg, self._observer_cfg = tuple(cfg.peers), tuple(cfg.observers)
        self.receiver = HeartbeatReceiver(cfg.cluster, cfg.node, cfg.keys.ring,
                                          {p.name: set(p.addresses) for p in cfg.peers},
                                          clock.wall, cfg.keys.max_clock_skew, clock.now,
                                          cfg.timing.heartbeat_interval)
        self.receiver.pairs = _pairs(cfg.cluster, cfg.keys)
        self.transport = HeartbeatTransport(self.receiver, list(cfg.addresses), cfg.heartbeat_port,
                                            self._links(), self._deliver,
                                            cfg.keys.signing, pacer or network)
        self.record = record
        self._skew_alarms: set[str] = set()
        self._replan()
        self.watch = PeerWatch(self.peers, tick)
        self.looking = WatchLoop(self.watch, clock.now, self._looked, pacer)
        # Secret and random per incarnation, written nowhere: a stranger who knows the
        # incarnation (member records) still cannot aim at the next sequence numbers,
        # the receivers' `near` budget (vigil.net.admit). 2**62 leaves the 64-bit field room.
        self._seq = itertools.count(secrets.randbits(62))
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._looked_at = self.clock.now()
        if self.pacer:
            self.pacer.loop = loop
            self.pacer.start()
        await self.transport.start()
        self._tasks = [loop.create_task(self.looking.run())]
        if self.pacer:
            self.pacer.every(self.cfg.timing.heartbeat_interval, self._beat_on_thread)
        else:
            self._tasks.append(loop.create_task(self._send_loop()))

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self.pacer:  # first: its timers send through the transport
            self.pacer.stop()
        self.transport.close()

    def use_peers(self, peers: tuple[Any, ...], observers: tuple[Any, ...],
                  settings: TopologySettings | None = None) -> tuple[list[str], list[str]]:
        """Hear and send to these peers and observers from now on (a reload): a new
        peer starts `unknown`, a removed one is forgotten. Returns (added, removed)."""
        old, new = {p.name for p in self._peer_cfg}, {p.name for p in peers}
        for p in peers:
            self.receiver.track(p.name, set(p.addresses))
        for name in old - new:
            self.receiver.untrack(name)
        self._peer_cfg, self._observer_cfg = tuple(peers), tuple(observers)
        domains = dataclasses.replace(self.cfg, peers=tuple(peers)).domains()
        self.topology = Topology(domains, settings or self.topology.settings)
        self._replan()
        return sorted(new - old), sorted(old - new)

    def follow(self, leader: str | None) -> None:
        """The leader is now `leader` (None: none): watch it, and send to everyone
        while it is us. Cheap when nothing changed."""
        if leader != self.leader:
            if self.leader == self.cfg.node:  # observers learn it later than we do
                self._fast_until = self.clock.now() + PACE_GRACE
            self.leader = leader
            self._replan()

    def _replan(self) -> None:
        me, leader, t = self.cfg.node, self.leader, self.topology
        watched = t.subjects(me, leader)
        for name in set(self.peers.peers) - watched:
            self.peers.remove(name)
        fast = self.cfg.timing.detector()
        paced = dataclasses.replace(fast, first_interval=fast.first_interval * t.settings.observer_every)
        for name in sorted(watched):
            settings = paced if t.paced(name, me, leader) else fast
            self.peers.add(name, settings)
            self.peers.pace(name, settings)
        self._slow = frozenset(w for w in t.watchers(me, leader) if t.paced(me, w, leader))
        self.transport.peer_links = self._links()
        self._note_suspects()

    def _note_suspects(self) -> None:
        self._suspects = tuple(sorted(self.peers.suspected_for(self.clock.now())))

    def voted_suspects(self) -> list[str]:
        """Lost peers whose conviction counts our word (Topology.voters): what our member
        record lists; heartbeats list all."""
        lost = self.peers.suspected_for(self.clock.now())
        return sorted(p for p in lost if self.cfg.node in self.topology.voters(p))

    def state(self) -> HeartbeatState:
        """The peers' detectors and our counters, as /status and /metrics show them (vigil.agent.status)."""
        t, r, guard = self.transport, self.receiver, self.watch.guard
        return HeartbeatState(self.peers.peers, t.sent, t.sealed, t.send_errors, r.counters, r.ring.members,
                              r.skew, guard.pauses, self.watch.local_health, guard.longest,
                              {**self.pacer.describe(), "withheld": self.withheld} if self.pacer else None)

    def _links(self) -> dict[str, list[tuple[str, int]]]:
        """Where our heartbeats go: our watchers' addresses, and every observer
        (routers hear us but send nothing back)."""
        watchers = self.topology.watchers(self.cfg.node, self.leader)
        links = {p.name: [(a, p.port) for a in p.addresses] for p in self._peer_cfg if p.name in watchers}
        for o in self._observer_cfg:
            links[f"observer {o.address}:{o.port}"] = [(o.address, o.port)]
        return links

    def use_keys(self, keys: HeartbeatKeys) -> None:
        """Verify with the new ring and sign with the new key from the next packet on."""
        self.receiver.ring, self.transport.signer = keys.ring, keys.signing
        self.receiver.pairs = _pairs(self.cfg.cluster, keys)

    def peer_key_ids(self, ids: dict[str, int]) -> None:
        """The key id each peer signs with, from its member record (only the node
        writes it): our packets to it go under our pair key from now on (vigil.net.wire
        version 4); a peer that names none gets signed packets."""
        self.transport.peer_ids = {n: i for n, i in ids.items() if i and n != self.cfg.node}

    def expect(self, incarnations: dict[str, int]) -> None:
        """The incarnation each peer's member record names (read from etcd, where only
        the node writes its own): its first packets after a restart, ours or its,
        get a verification budget a blind flood cannot drain (vigil.net.admit)."""
        for name, incarnation in incarnations.items():
            self.receiver.expect(name, incarnation)

    def send_now(self, extra: bool = True, skip: frozenset[str] = frozenset()) -> Heartbeat:
        """Send our current heartbeat (and its copies) now; `extra`: out of schedule,
        to carry news (receivers do not time it, vigil.net.wire)."""
        return self._send(extra, skip, asyncio.get_running_loop().call_later)

    def _send(self, extra: bool, skip: frozenset[str], later: Callable[..., object]) -> Heartbeat:
        """Our heartbeat to every watcher but `skip`, and its copies scheduled with
        `later(delay, fn)` (the loop's or the heartbeat thread's)."""
        health, role = self.status()
        hb = Heartbeat(self.cfg.cluster, self.cfg.node, self.incarnation, next(self._seq),
                       int(self.clock.wall() * 1e6), health, role, self._suspects, extra)
        batch = self.transport.send(hb, skip)
        t = self.cfg.timing
        for i in range(1, t.heartbeat_copies):  # the same packet again: receivers keep the first
            later(i * t.copy_spacing, functools.partial(self.transport.resend, batch))
        return hb

    def _skip(self, beat: int) -> frozenset[str]:
        """Whom scheduled beat number `beat` skips: the paced observers, except on every
        `observer_every`th beat and while a leader that stepped down still sends to all."""
        paced = beat % self.topology.settings.observer_every != 0 and self.clock.now() >= self._fast_until
        return self._slow if paced else frozenset()

    def _beat_on_thread(self) -> None:
        """One scheduled heartbeat and its copies, sent by the heartbeat thread."""
        assert self.pacer is not None
        if self.clock.now() - self._looked_at > LOOP_STALE:
            if not self.withheld_since:
                self.withheld_since = self.clock.now()
                log.error("the agent's loop has not looked at its peers for %.1f s: heartbeats withheld "
                          "until it does (a hung agent must not look alive)", self.clock.now() - self._looked_at)
            self.withheld += 1
            return
        self._send(False, self._skip(next(self._beats)), self.pacer.call_later)

    def _paused(self) -> None:
        if self.watch.paused:
            log.info("local pause of %.0f ms: not held against peers", self.watch.paused * 1000)

    def _deliver(self, hb: Heartbeat, link: str, verdict: str, at: float | None = None) -> None:
        """`at`: when the heartbeat thread took it (None: now, on this loop)."""
        peer = self.peers.peers.get(hb.node)
        if peer is None:  # a member we do not watch (yet): the leader before we read its key
            return
        now = self.clock.now() if at is None else at
        if verdict == "duplicate":  # byte for byte a packet we took: it proves its link, nothing more
            self.watch.deliver(hb, link, verdict, now, stamped=at is not None)
            return
        heard = (peer.suspects, peer.role)
        changes = self.watch.deliver(hb, link, verdict, now, stamped=at is not None)
        self.looking.poke()
        if at is None:  # a stamped delivery judges no stall of ours: nothing new to report
            self._paused()
        if changes:
            self._note_suspects()
            self.on_transitions(changes)
        if (peer.suspects, peer.role) != heard:
            self.on_news()  # what a peer suspects, or whether it leads, changed

    async def _send_loop(self) -> None:
        interval = self.cfg.timing.heartbeat_interval
        loop = asyncio.get_running_loop()
        nxt = loop.time()
        for beat in itertools.count():
            self.looking.look()  # our suspicions fresh in the heartbeat, and one wake for both
            self.send_now(extra=False, skip=self._skip(beat))
            # Fixed-rate schedule: a late send does not push every later one back.
            nxt = max(nxt + interval, loop.time())
            await asyncio.sleep(nxt - loop.time())

    def _looked(self, changes: list[PeerTransition]) -> None:
        self._looked_at = self.clock.now()
        if self.withheld_since:
            self.record("heartbeats_withheld", f"the agent's loop looked at nothing for "
                        f"{self._looked_at - self.withheld_since + LOOP_STALE:.1f} s: the heartbeat thread "
                        "sent nothing meanwhile (peers may have suspected this node)", withheld=self.withheld)
            self.withheld_since = 0.0
        self._paused()
        if changes:
            self._note_suspects()
            self.on_transitions(changes)
        if self._skew_alarms != self.receiver.skewed.keys():
            self._report_skew()

    def _report_skew(self) -> None:
        """One event when a peer's clock goes beyond the window, one when it is back."""
        now = self.receiver.skewed
        for node in sorted(now.keys() - self._skew_alarms):
            self.record("clock_skew", f"{node}'s clock is {now[node]:+.1f} s from ours (window "
                        f"{self.receiver.max_skew:g} s): an alarm only, its heartbeats still count; "
                        "check time synchronisation (chrony) on both nodes", subject=node,
                        skew=round(now[node], 3))
        for node in sorted(self._skew_alarms - now.keys()):
            self.record("clock_skew_cleared", f"{node}'s clock is back within "
                        f"{self.receiver.max_skew / 2:g} s of ours", subject=node)
        self._skew_alarms = set(now)


def _pairs(cluster: str, keys: HeartbeatKeys) -> PairKeys | None:
    return PairKeys(cluster, keys.signing, keys.ring) if keys.signing else None
