"""The drain budget (pure): how many nodes may leave service at once for
their own health verdicts, cluster-wide and per failure domain, so that a
cluster-wide XID storm or a warm room degrades the cluster instead of
emptying it (as Kubernetes' disruption budgets bound voluntary evictions).

Every agent decides for itself, from the member records of the snapshot it
reads, so no vote and no extra etcd write is needed:
- `out`: the members whose published verdict takes them out of service
  (draining or failed). They hold the budget, whatever made them go; a
  failed verdict (a GPU off the bus) is never deferred.
- A node whose own verdict is a drain that may wait (a deferrable finding:
  XIDs, heat, the facility; not an incompatible workload) first says so
  (`drain: deferred` in its record, DrainGate) and drains when it is already
  out (it keeps its place, so a drain is never taken back by a node that
  wanted one later), or when the nodes waiting for a place (their records
  say `drain: deferred` and since when) and itself, taken in the order they
  began to wait (then by name), leave room for it within `max(1, share x
  members)` cluster-wide and `max(1, share x its domain's size)` in its
  domain.
- A node that may not drain yet publishes `degraded` instead, with the
  reason: it keeps serving (at half weight) and leads only when no ready
  member can, and it tries again on every snapshot.

Agents that read the same snapshot agree on who goes first, but two that
read different snapshots (one has not yet seen the other's record) could
each take the last place at once. So a place is also claimed in etcd
(vigil.store.drain_places), by a transaction that fails if another claim came
since the places were read: the gate says it `wants_place`, the agent reads
the holders, asks `fits(holders)` and, when the claim succeeds, `grant()`s.
A holder counts as out whatever its record says yet.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol

from vigil.core.damping import domain_rooms
from vigil.core.health import DEGRADED, DRAINING, FAILED, Verdict

OUT = frozenset({DRAINING, FAILED})
# s a drain waits, said, before it takes a place: the nodes a storm hit within one
# health round (1 s by default) of each other have said so by then.
SETTLE = 2.0
STALE = 10.0  # s without a snapshot (etcd away) after which a drain goes ahead unbudgeted


@dataclass(frozen=True)
class DrainBudget:
    share: float = 0.34  # of the members (and of each failure domain's) out for health at once; 1: no limit

    def rooms(self, members: int, domains: Mapping[str, str]) -> tuple[int, dict[str, int]]:
        """(cluster-wide room, room per domain); at least one node may always drain."""
        return max(1, int(self.share * members)), domain_rooms(self.share, domains)


class MemberState(Protocol):
    """What the gate reads of a member record (vigil.store.member_record.MemberRecord)."""

    @property
    def verdict(self) -> str: ...
    @property
    def drain_deferred(self) -> bool: ...
    @property
    def drain_since(self) -> float: ...


@dataclass(frozen=True)
class Published:
    """What the budget reads of one member record."""

    verdict: str
    deferred: bool = False  # its own verdict is a drain, waiting for a place
    since: float = math.inf  # wall time it started waiting (its record's drain_since); unknown: last


def may_drain(me: str, budget: DrainBudget, published: Mapping[str, Published],
              domains: Mapping[str, str], holders: Iterable[str] = ()) -> bool:
    """Whether `me`, whose own verdict is a deferrable drain, may drain now.
    `published`: every member's record (`me` included where it has one);
    `domains`: member -> failure domain, for every configured member;
    `holders`: the members that hold a claimed place (out, whatever their records say)."""
    mine = published.get(me)
    if mine is not None and mine.verdict in OUT:
        return True  # already out: it keeps its place
    out = {n for n, r in published.items() if r.verdict in OUT} | (set(holders) - {me})
    room, per_domain = budget.rooms(_size(published, domains), domains)
    for name in out:
        room -= 1
        _take(per_domain, domains.get(name))
    waiting = {me, *(n for n, r in published.items() if r.deferred and n not in out)}
    first = sorted(waiting, key=lambda n: (published[n].since if n in published else math.inf, n))
    for name in first:  # who waited longest goes first (then by name): nobody starves
        domain = domains.get(name)
        # (a node of no domain, or one domain: no room per domain)
        fits = room > 0 and (per_domain.get(domain, 1) if domain is not None else 1) > 0
        if name == me:
            return fits
        if fits:
            room -= 1
            _take(per_domain, domain)
    return False


class DrainGate:
    """This node's verdict through the drain budget, judged on the member records
    of the last snapshot (`see`: a reference kept, read only while the node wants
    a deferrable drain, so a cluster's changes cost nothing otherwise).

    A drain starts deferred, always: the node first says it wants one (its
    record: `drain: deferred` and since when) and takes a place only once that
    record is in the snapshots it reads and `settle` seconds have passed, so
    that the nodes a storm hit at the same moment have said so too and every
    agent orders the same waiting list (without it, each would find the budget
    empty in the snapshot before the storm and drain). A place taken is kept
    until the drain ends, whatever the records say meanwhile. Without a
    snapshot for `stale` seconds (etcd away) the budget cannot be judged and
    the node's own health comes first: it drains. A share of 1 is no budget.
    With `claims` set, a place the records leave room for is not yet taken:
    the gate `wants_place` until the agent's claim in etcd succeeds and it
    calls `grant()` (see the module docstring)."""

    def __init__(self, me: str, budget: DrainBudget, domains: Mapping[str, str], settle: float = SETTLE,
                 stale: float = STALE):
        self.me, self.budget, self.domains, self.settle, self.stale = me, budget, domains, settle, stale
        self._records: Mapping[str, MemberState] = {}
        self._seen_at: float | None = None  # when the last snapshot was seen (monotonic)
        self._since: float | None = None  # when this drain was first deferred (monotonic)
        self._since_wall = 0.0  # the same, on the wall clock, for the other agents' ordering
        self._granted = False
        self.claims = False  # places are claimed in etcd (the agent's DrainPlaces): `grant()` gives one
        self.wants_place = False  # the records leave room for this node: claim a place now

    def see(self, records: Mapping[str, MemberState], now: float) -> None:
        """The member records (name -> MemberRecord) of the snapshot just read."""
        self._records, self._seen_at = records, now

    def apply(self, v: Verdict, now: float, wall: float) -> Verdict:
        """`v` itself, or `v` deferred (degraded) while the budget has no place for it."""
        if v.state != DRAINING or not v.deferrable:
            self._since, self._granted, self.wants_place = None, False, False
            return v
        if self._since is None:
            self._since, self._since_wall = now, wall
        seen = self._since if self._seen_at is None else self._seen_at
        if self._granted or self.budget.share >= 1 or now - seen > self.stale:
            self.grant()
            return v
        published = self._published()
        mine = published.get(self.me)
        said = mine is not None and (mine.deferred or mine.verdict in OUT) and now - self._since >= self.settle
        self.wants_place = said and may_drain(self.me, self.budget, published, self.domains)
        out_already = mine is not None and mine.verdict in OUT  # (restarted mid-drain) it holds a place
        if self.wants_place and (not self.claims or out_already):  # the keeper then writes its claim
            self.grant()
            return v
        room, per_domain = self.budget.rooms(_size(published, self.domains), self.domains)
        limit = f"{room} at once" + (f", {per_domain[d]} of {d}" if (d := self.domains.get(self.me)) in per_domain
                                     else "")
        return deferred(v, [n for n, p in published.items() if p.verdict in OUT], limit, self._since_wall)

    @property
    def granted(self) -> bool:
        """This node holds a place (or needs none): its drain goes ahead."""
        return self._granted

    @property
    def claiming(self) -> bool:
        """A place held needs a claim in etcd (claims are on and there is a budget)."""
        return self.claims and self.budget.share < 1

    @property
    def since_wall(self) -> float:
        """Wall time this node began to wait for a place."""
        return self._since_wall

    def fits(self, holders: Iterable[str]) -> bool:
        """Whether a place is left for this node with `holders` holding claimed places."""
        return may_drain(self.me, self.budget, self._published(), self.domains, holders)

    def grant(self) -> None:
        """The place is this node's (its claim succeeded): `apply` lets the drain through."""
        self._granted, self.wants_place = True, False

    def _published(self) -> dict[str, Published]:
        return {n: Published(r.verdict, r.drain_deferred, r.drain_since) for n, r in self._records.items()}


def _size(published: Mapping[str, Published], domains: Mapping[str, str]) -> int:
    """The members the shares are of: every configured one, and any other with a record."""
    return max(len(domains), len(published), 1)


def _take(per_domain: dict[str, int], domain: str | None) -> None:
    if domain in per_domain:
        per_domain[domain] -= 1


def deferred(v: Verdict, out: Iterable[str], limit: str, since: float) -> Verdict:
    """`v` (a deferrable drain) held back: degraded, saying why and who holds the places."""
    holders = sorted(out)
    why = (f"drain deferred by the drain budget ({limit}): {len(holders)} member(s) already out for "
           f"health ({', '.join(holders[:5])}{', ...' if len(holders) > 5 else ''}); serving degraded "
           "until a place frees")
    return dataclasses.replace(v, state=DEGRADED, reasons=(why, *v.reasons), deferred=True, deferred_since=since)
