"""When has etcd expired a lease nobody renews? (pure)

etcd deletes the keys of an expired lease at its next lease scan, which runs
every 500 ms, so a key bound to a dead node's lease lingers for up to half a
second after the lease has run out. A waiter that can prove the lease has
expired may revoke it itself at once: an expired lease can no longer be
renewed (etcd's `Renew` of an expired lease waits for its revocation), so the
revoke only does now what etcd is about to do (vigil.agent.lease_expiry).

etcd's LeaseTimeToLive tells the time left only in whole seconds, truncated
(`int64(Remaining().Seconds())`): it reads 0 from one second before the
expiry until the scan revokes it, then -1. `ExpiryWatch` times the expiry from
the moment the reading turns 0:
- a 0 answered at `now` (my clock) means less than a second was left when etcd
  answered, which was before `now`: the expiry is before `now + 1`;
- every renewal resets the time left to the granted TTL, so a renewal between
  two readings shows as a reading of 1 or more, as long as the two readings are
  less than `granted - 1` seconds apart (the earlier one's sending to the
  later one's answer); a longer gap (a stalled loop) starts the timing again;
- so readings of 0 from `first` on, without such a gap, and one more sent at
  or after `first + 1 + margin` (etcd answers it after the expiry: it cannot
  have been renewed since) prove the lease expired unrenewed.
`margin` covers the two clocks' rates over that second (drift is parts per
million; 20 ms is generous). A lease granted for 1 s gives no time to see a
renewal, so its expiry is never claimed (`Leave`: etcd's scan takes it).

What the proof assumes of etcd: the readings come from the lessor the owner
renews with, etcd's leader's. A leader cut off from its quorum answers from its
own lessor, which sees no renewals, until check-quorum makes it step down
within an election timeout (1 s by default); it cannot show a second of zeros
for a lease renewed every `keepalive_interval` while the election timeout is
shorter than `lease_ttl - keepalive_interval` (Vigil's default timings: 7.5 s,
the lab's fast ones: 1.5 s). A new leader gives every lease, an expired one
too, a whole TTL again (and its readings start the timing again); an owner whose lease was
revoked just before loses its session (its fencing tokens stop it acting), as
its lease running out would have done. The clock is monotonic: a host
suspended between two readings could hide a renewal (servers that hold
leases are not suspended).
"""

from __future__ import annotations

from dataclasses import dataclass

POLL = 0.02  # s between readings in a lease's last second (the expiry is known to within this)
MARGIN = 0.02  # s past the computed expiry before the reading that proves it
MAX_TTL = 9_000_000_000  # s: etcd's MaxLeaseTTL


def lease_seconds(value: object) -> int | None:
    """A lease's seconds as etcd's gateway sends them (int64 as a string; -1: no such
    lease), or None for anything else (the total parser of that answer)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)) or len(str(value)) > 12:
        return None
    try:
        n = int(value)
    except ValueError:
        return None
    return n if -1 <= n <= MAX_TTL else None


@dataclass(frozen=True)
class Poll:
    """Read the time left again at `at` (my clock)."""
    at: float


@dataclass(frozen=True)
class Revoke:
    """The lease has expired and was not renewed: revoking it is etcd's own next step."""


@dataclass(frozen=True)
class Leave:
    """Stop watching: the lease is gone (`gone`); or it cannot be timed (etcd's scan
    will take it), or it was renewed (it outlived its granted TTL while watched: its
    owner reaches etcd, and reading it every POLL for ever would only cost etcd)."""
    gone: bool


class ExpiryWatch:
    """Fed every LeaseTimeToLive reading of one lease; says when to read again
    and when the lease has provably expired (the module's contract)."""

    def __init__(self, poll: float = POLL, margin: float = MARGIN):
        self.poll, self.margin = poll, margin
        self.first: float | None = None  # answer time of the first 0 of the current unbroken run
        self._sent: float | None = None  # when the previous reading was sent
        self._since: float | None = None  # when the first reading was sent

    def read(self, sent: float, now: float, left: int, granted: int) -> Poll | Revoke | Leave:
        """A reading sent at `sent` and answered at `now`: `left` whole seconds
        (-1: no such lease) of `granted`."""
        previous, self._sent = self._sent, sent
        self._since = sent if self._since is None else self._since
        if left < 0:
            return Leave(gone=True)
        if granted <= 1 or (left >= 1 and now - self._since > granted):  # untimable, or renewed
            return Leave(gone=False)
        if left >= 1:  # more than a second left, or renewed since the last reading
            self.first = None
            return Poll(max(now + self.poll, sent + left - 1 - self.poll))
        if self.first is None or previous is None or now - previous >= granted - 1 - self.poll:
            self.first = now  # the start of a run of zeros: the expiry is before now + 1
        due = self.first + 1 + self.margin
        if sent >= due:
            return Revoke()
        return Poll(min(now + self.poll, due))
