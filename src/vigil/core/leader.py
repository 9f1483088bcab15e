"""The leader role of one node: when it may act, and when it must stop.

Rules:
- A node acts as leader only between `acquired()` and the first of
  `resigned()`, `lost()` or its self-demotion deadline.
- The deadline is `sent_at + demote_after`, where `sent_at` is when the last
  keep-alive that etcd acknowledged was *sent*. etcd started the lease's new
  TTL no earlier than that, so the deadline falls at least
  `lease_ttl - demote_after` before etcd can expire the lease and let
  another node take over. This is the self-fencing rule.
- `is_leader(now)` is checked with a fresh `now` before every leader action,
  so a process that was frozen past its deadline stops the instant it runs.
- A demoted token is never reused: to lead again the node campaigns and gets
  a new, higher token.
"""

from __future__ import annotations

from dataclasses import dataclass

FOLLOWER, LEADER = "follower", "leader"


@dataclass(frozen=True)
class RoleChange:
    """Leadership started or ended, with the cause; `at` is monotonic seconds."""

    kind: str  # "acquired" | "demoted" | "resigned" | "lost"
    token: int
    at: float
    reason: str


class LeaderRole:
    def __init__(self, demote_after: float):
        self.demote_after = demote_after
        self.state = FOLLOWER
        self.token = 0
        self.since = 0.0
        self.valid_until = 0.0

    def __repr__(self) -> str:
        return f"<LeaderRole {self.state} token={self.token} valid_until={self.valid_until:.3f}>"

    def acquired(self, token: int, lease_sent_at: float, now: float) -> RoleChange:
        """The campaign succeeded with `token` under a lease last renewed at `lease_sent_at`."""
        self.state, self.token, self.since = LEADER, token, now
        self.valid_until = lease_sent_at + self.demote_after
        return RoleChange("acquired", token, now, "won the election")

    def renewed(self, sent_at: float) -> None:
        """A keep-alive sent at `sent_at` was acknowledged by etcd."""
        if self.state == LEADER:
            self.valid_until = max(self.valid_until, sent_at + self.demote_after)

    def is_leader(self, now: float) -> bool:
        return self.state == LEADER and now < self.valid_until

    def remaining(self, now: float) -> float:
        return max(0.0, self.valid_until - now) if self.state == LEADER else 0.0

    def check(self, now: float) -> RoleChange | None:
        """Self-demote if the deadline has passed; returns the change or None."""
        if self.state == LEADER and now >= self.valid_until:
            late = now - self.valid_until
            return self._end("demoted", self.valid_until,
                             f"lease not renewed within {self.demote_after:g} s "
                             f"(deadline passed {late * 1000:.0f} ms ago)")
        return None

    def resigned(self, now: float, reason: str) -> RoleChange | None:
        """Give the role up at `now`. A role whose deadline already passed (the
        process was paused past it) ended then, by self-demotion: that is what
        is returned, whatever noticed it first."""
        if self.state != LEADER:
            return None
        return self.check(now) or self._end("resigned", now, reason)

    def lost(self, now: float, reason: str) -> RoleChange | None:
        """The key is gone; like `resigned`, a passed deadline is reported as the end."""
        if self.state != LEADER:
            return None
        return self.check(now) or self._end("lost", now, reason)

    def _end(self, kind: str, at: float, reason: str) -> RoleChange:
        change = RoleChange(kind, self.token, at, reason)
        self.state, self.valid_until = FOLLOWER, 0.0
        return change
