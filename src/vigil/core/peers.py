"""The view one observer has of its peers: alive or suspected, per link.

Rules:
- A peer starts `unknown` until its first authentic heartbeat.
- `alive -> suspect` when the phi detector crosses the threshold; the
  transition carries phi and the silence that caused it.
- `suspect -> alive` only after `rise` consecutive fresh heartbeats
  (hysteresis: one stray packet does not resurrect a dead peer).
- A peer is alive while *either* of its links delivers: the detector is fed
  every accepted heartbeat whatever link it came on; links are tracked
  separately only for reporting.
- A new incarnation (the peer restarted) resets the detector history.
- Gaps are learnt only while the peer is alive: the silence that made it
  suspect, and the gaps of its rise back, were a fault, and must not make
  the detector slower for the next one (vigil.core.detector).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from vigil.core.detector import DetectorSettings, PauseGuard, PhiAccrualDetector

UNKNOWN, ALIVE, SUSPECT = "unknown", "alive", "suspect"
# The detectors are evaluated at the first peer's deadline (the instant its phi
# would cross the threshold), so a suspicion is noticed when it is due, not up to a
# period late, and an idle observer wakes about ten times a second, not a hundred.
TICK = 0.1  # s: the longest an observer goes without looking (its pause guard's period)
MIN_NAP = 0.001  # s: the shortest; a deadline just missed by rounding is looked at again this soon
NEAR_THRESHOLD = 0.001  # s: phi is computed from this long before it can cross the threshold
PAUSE_TOLERANCE = 0.02  # s: a look later than promised by this was our own stall, forgiven on every peer
# Lifeguard's local health: each of our own stalls of LOCAL_HEALTH_STALL or more (a
# heartbeat interval we could not keep) in the last LOCAL_HEALTH_WINDOW, at most
# LOCAL_HEALTH_MAX, gives every peer LOCAL_HEALTH_STEP more before we accuse it: a
# starved observer is slower to accuse, not quicker. Shorter stalls are only
# forgiven: counted too, a busy machine's 20-60 ms hiccups doubled the p99 of
# every survivor's detection of a killed leader at 30 agents on 2 cores.
LOCAL_HEALTH_STALL, LOCAL_HEALTH_WINDOW, LOCAL_HEALTH_MAX, LOCAL_HEALTH_STEP = 0.1, 10.0, 8, 0.1


@dataclass(frozen=True)
class PeerTransition:
    """A change of one peer's liveness, with the evidence that caused it."""

    peer: str
    old: str
    new: str
    at: float
    phi: float
    silent_for: float
    cause: str


class HeartbeatFields(Protocol):
    """What a watch reads of an authentic heartbeat (vigil.net.wire.Heartbeat)."""

    @property
    def node(self) -> str: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def health(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def suspects(self) -> tuple[str, ...] | None: ...
    @property
    def extra(self) -> bool: ...


GAP_BUCKETS = (0.101, 0.102, 0.105, 0.11, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.4, 0.5, 1.0, 2.0, 5.0)


@dataclass
class GapHistogram:
    """Heartbeat inter-arrival gaps as the observer saw them (cumulative
    buckets, Prometheus style): the raw material of the detection-time vs
    false-suspicion trade-off in docs/configuration.md."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(GAP_BUCKETS) + 1))
    total: int = 0
    largest: float = 0.0

    def add(self, gap: float) -> None:
        for i, bound in enumerate(GAP_BUCKETS):
            if gap <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += 1
        self.largest = max(self.largest, gap)

    def over(self) -> dict[str, int]:
        """How many gaps exceeded each bucket bound."""
        out, seen = {}, 0
        for bound, n in zip(GAP_BUCKETS, self.counts):
            seen += n
            out[f"{bound:g}"] = self.total - seen
        return out


@dataclass
class PeerState:
    name: str
    detector: PhiAccrualDetector
    state: str = UNKNOWN
    since: float = 0.0
    incarnation: int = 0
    rises: int = 0
    health: str = "unknown"
    role: str = "unknown"
    suspects: tuple[str, ...] | None = None  # as its latest heartbeat listed them (None: not listed)
    links: dict[str, float] = field(default_factory=dict)
    gaps: GapHistogram = field(default_factory=GapHistogram)
    paced: DetectorSettings | None = None  # the detector's settings from its next heartbeat on

    def heartbeat_age(self, now: float) -> float | None:
        last = self.detector.last_heartbeat
        return None if last is None else max(0.0, now - last)


class PeerTable:
    """Liveness of every configured peer as seen from this node."""

    def __init__(self, peers: list[str], settings: DetectorSettings, rise: int = 2):
        self.settings, self.rise = settings, rise
        self.peers = {p: PeerState(p, PhiAccrualDetector(settings)) for p in peers}
        self.slack = 0.0  # s added to every deadline: our own poor local health (PeerWatch)

    def __repr__(self) -> str:
        states = ", ".join(f"{p.name}={p.state}" for p in self.peers.values())
        return f"<PeerTable {states}>"

    def add(self, peer: str, settings: DetectorSettings | None = None) -> None:
        """Start tracking a peer learnt at run time (the router learns nodes from etcd);
        `settings`: its detector's, when it is heard at another pace than the table's."""
        self.peers.setdefault(peer, PeerState(peer, PhiAccrualDetector(settings or self.settings)))

    def pace(self, peer: str, settings: DetectorSettings) -> None:
        """Expect `peer` at another pace (it started or stopped leading) from its
        next heartbeat on: its detector then starts over with `settings`. Until
        that heartbeat the old pace judges it, so a leader that died just before
        its successor was named is suspected when the old pace says, not a slow
        pace later; and a new pace is never applied to a silence it did not cause."""
        p = self.peers.get(peer)
        if p is None:
            return
        if p.detector.last_heartbeat is None:
            p.detector, p.paced = PhiAccrualDetector(settings), None
        else:
            p.paced = None if p.detector.settings == settings else settings

    def remove(self, peer: str) -> None:
        """Stop tracking a peer learnt at run time (its member record went): a
        name someone wrote into etcd once must not be kept forever. Added again,
        it starts `unknown`, as any new peer."""
        self.peers.pop(peer, None)

    def heartbeat(self, peer: str, link: str, now: float, incarnation: int,
                  health: str = "unknown", role: str = "unknown",
                  suspects: tuple[str, ...] | None = None) -> list[PeerTransition]:
        """Feed one accepted heartbeat; returns the transitions it caused."""
        p = self.peers[peer]
        p.links[link] = now
        p.health, p.role, p.suspects = health, role, suspects
        out: list[PeerTransition] = []
        if p.paced is not None:  # its new pace starts here (`pace`)
            p.detector, p.paced = PhiAccrualDetector(p.paced), None
        if incarnation != p.incarnation:
            restarted = p.incarnation != 0
            p.incarnation = incarnation
            p.detector = PhiAccrualDetector(p.detector.settings)
            if restarted and p.state == ALIVE:
                out.append(self._move(p, SUSPECT, now, 0.0, "peer restarted (new incarnation)"))
        if p.detector.last_heartbeat is not None:
            p.gaps.add(now - p.detector.last_heartbeat)
        p.detector.heartbeat(now, learn=p.state == ALIVE)
        if p.state == ALIVE:
            return out
        p.rises += 1
        if p.state == UNKNOWN or p.rises >= self.rise:
            out.append(self._move(p, ALIVE, now, 0.0, f"{p.rises} fresh heartbeat(s)"))
        return out

    def claiming_leader(self) -> list[str]:
        """Alive peers whose latest heartbeat says they act as leader."""
        return sorted(p.name for p in self.peers.values() if p.state == ALIVE and p.role == "leader")

    def news(self, peer: str, link: str, now: float, incarnation: int, health: str, role: str,
             suspects: tuple[str, ...] | None) -> None:
        """An authentic heartbeat sent out of schedule: take its news (role, health,
        suspicions) but do not time it. Counted as an arrival, its short gap would
        widen the learnt spread and slow every later detection; it does not count
        towards liveness or a rise either (a peer is judged on its schedule)."""
        p = self.peers[peer]
        p.links[link] = now
        if incarnation == p.incarnation:  # a restarted peer's news waits for its first timed heartbeat
            p.health, p.role, p.suspects = health, role, suspects

    def heard_suspicions(self) -> dict[str, frozenset[str]]:
        """What each alive peer's latest heartbeat says it suspects, for the peers
        whose latest heartbeat lists it (wire version 3); the rest say nothing."""
        return {p.name: frozenset(p.suspects) for p in self.peers.values()
                if p.state == ALIVE and p.suspects is not None}

    def link_seen(self, peer: str, link: str, now: float) -> None:
        """An authentic duplicate arrived on `link`: that link works."""
        self.peers[peer].links[link] = now

    def tick(self, now: float) -> list[PeerTransition]:
        """Re-evaluate every peer at `now`; returns alive -> suspect transitions."""
        out = []
        for p in self.peers.values():
            if p.state != ALIVE:
                if p.state == SUSPECT and p.rises and not p.detector.is_available(now):
                    p.rises = 0  # a rise run must be consecutive fresh heartbeats
                continue
            due = p.detector.suspect_at() + self.slack
            if now < due - NEAR_THRESHOLD:
                continue  # phi is below the threshold until then: no need to compute it
            phi = p.detector.phi(now - self.slack)
            if phi >= self.settings.threshold or now >= due:  # at `due` phi is the threshold, to rounding
                silent = p.heartbeat_age(now) or 0.0
                out.append(self._move(p, SUSPECT, now, phi, f"phi {phi:.1f} >= "
                                      f"{self.settings.threshold:g} after {silent*1000:.0f} ms silence"))
        return out

    def next_deadline(self) -> float:
        """The first instant `tick` can change anything: an alive peer's phi
        crossing the threshold, or a rising suspect's run being broken. +inf
        when no peer has been heard."""
        due = math.inf
        for p in self.peers.values():
            if p.state == ALIVE or (p.state == SUSPECT and p.rises):
                due = min(due, p.detector.suspect_at() + self.slack)
        return due

    def forgive(self, seconds: float, now: float) -> None:
        """The observer was stalled for `seconds`; do not blame the peers for it."""
        for p in self.peers.values():
            p.detector.forgive(seconds, now)

    def suspected_for(self, now: float) -> dict[str, float]:
        return {p.name: now - p.since for p in self.peers.values() if p.state == SUSPECT}

    def unheard(self) -> set[str]:
        """Peers not heard now: never heard (unknown) or heard and then lost
        (suspected). Only the second are suspicions (`suspected_for`): a peer we
        never heard, because we just started, is no evidence of anything."""
        return {p.name for p in self.peers.values() if p.state != ALIVE}

    def alive(self) -> set[str]:
        return {p.name for p in self.peers.values() if p.state == ALIVE}

    def _move(self, p: PeerState, new: str, now: float, phi: float, cause: str) -> PeerTransition:
        t = PeerTransition(p.name, p.state, new, now, phi, p.heartbeat_age(now) or 0.0, cause)
        p.state, p.since, p.rises = new, now, 0
        return t


class PeerWatch:
    """What every listener does with heartbeats (the agent's HeartbeatService,
    the router's membership): a PeerTable fed through the local pause guard.

    Timing contract: the caller calls `tick(now)` again by `due` (seconds on
    the same clock), which is the first peer's deadline but never more than
    `nap` away; `deliver` may move `due` earlier (a new peer, a deadline that
    came forward), and then the caller wakes sooner. Looking later than `due`
    by more than the tolerance is our own stall: every call first checks that,
    so after a stall the pause is forgiven before queued heartbeats or the next
    tick are judged (a stalled observer must not convict its peers). `paused`
    is the last forgiven lateness (s), for the caller to report."""

    def __init__(self, table: PeerTable, nap: float = TICK, tolerance: float = PAUSE_TOLERANCE):
        self.peers, self.nap, self.guard, self.paused = table, nap, PauseGuard(tolerance), 0.0
        self.due = math.inf
        self._stalls: deque[float] = deque()  # when our own recent stalls were noticed

    @property
    def local_health(self) -> int:
        """Lifeguard's score: our own stalls in the last LOCAL_HEALTH_WINDOW (0: healthy)."""
        return min(len(self._stalls), LOCAL_HEALTH_MAX)

    def _observe(self, now: float) -> None:
        self.paused = self.guard.tick(now)
        if self.paused:
            self.peers.forgive(self.paused, now)
            if self.paused >= LOCAL_HEALTH_STALL:
                self._stalls.append(now)
        while self._stalls and now - self._stalls[0] >= LOCAL_HEALTH_WINDOW:
            self._stalls.popleft()
        self.peers.slack = self.local_health * LOCAL_HEALTH_STEP

    def _plan(self, due: float, now: float) -> None:
        if due > now + self.nap + MIN_NAP:  # (a deadline just past the nap is waited for)
            due = now + self.nap
        self.due = max(now + MIN_NAP, due)
        self.guard.expect(self.due)

    def deliver(self, hb: HeartbeatFields, link: str, verdict: str, now: float,
                stamped: bool = False) -> list[PeerTransition]:
        """One authentic packet (vigil.net.wire.Heartbeat) accepted with `verdict`:
        a duplicate proves its link, an extra brings news untimed, the rest are timed.
        A duplicate judges nothing, so it does not look for our own stall either
        (whatever judges next does, first). `stamped`: `now` is when the heartbeat
        thread took the packet (vigil.net.pacer). The thread hands a look at every
        `due` before it stamps anything later, so a stamp later than `due` by more
        than the tolerance is the thread's own stall (a SIGSTOP, a thread kept from
        its CPU): forgiven first, like the loop's, so the stall is never learned as
        a gap. A stamped packet counts as no earlier than the peer's last arrival
        (a forgiven stall moved that forward)."""
        stamp = now
        if stamped:
            p = self.peers.peers.get(hb.node)
            last = p.detector.last_heartbeat if p else None
            now = now if last is None else max(now, last)
        if verdict == "duplicate":
            self.peers.link_seen(hb.node, link, now)
            return []
        self._observe(stamp)
        if hb.extra:
            self.peers.news(hb.node, link, now, hb.incarnation, hb.health, hb.role, hb.suspects)
            return []
        out = self.peers.heartbeat(hb.node, link, now, hb.incarnation, hb.health, hb.role, hb.suspects)
        deadline = self.peers.peers[hb.node].detector.suspect_at() + self.peers.slack
        if deadline < self.due:
            self._plan(deadline, now)
        return out

    def tick(self, now: float) -> list[PeerTransition]:
        self._observe(now)
        out = self.peers.tick(now)
        self._plan(self.peers.next_deadline(), now)
        return out
