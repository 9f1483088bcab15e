"""What a heartbeat receiver spends on strangers: token buckets that bound the
Ed25519 verifications one source address can cause (sans-IO: every call takes
`now`, monotonic seconds).

A packet reaches a signature check only after the cheap checks (it parses,
names a tracked node other than us, comes from one of that node's addresses,
and its sequence number is new). What is left is bounded per source address:

- `near`: the next sequence numbers of the incarnation we know, the only ones
  a peer sends in steady state. A generous multiple of the heartbeat rate, so
  a peer's own packets are never limited.
- `far`: anything else that could be authentic (a new incarnation after a
  restart, or a sequence number beyond what the peer can have sent since we
  last heard it): a few per second. A stranger who cannot see the peer's
  packets guesses a 64-bit sequence number, lands here, and costs at most
  these few verifications per second whatever it sends.

The buckets are per source, not per node: a flood spoofing one link's
address leaves the node's other links untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

NEAR_PER_INTERVAL = 8.0  # verifications per heartbeat interval: copies, extras and reordering fit
NEAR_BURST = 64.0  # a backlog after a local stall of a few seconds
FAR_RATE = 2.0  # per second: a peer restarts rarely
FAR_BURST = 4.0
WINDOW = 64  # sequence numbers ahead of the highest verified one that count as near at once
WINDOW_PER_INTERVAL = 4.0  # and this many more per heartbeat interval of silence


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved; each `take` spends one."""

    def __init__(self, rate: float, burst: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, None

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens:.1f}/{self.burst:g} at {self.rate:g}/s>"

    def take(self, now: float) -> bool:
        if self.last is not None and now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now if self.last is None else max(self.last, now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Budget:
    near: TokenBucket
    far: TokenBucket


class VerifyBudget:
    """Per source address, how many signature checks it may still cause.

    Sources are only ever addresses of tracked peers (the receiver checks the
    source first), so the table is as small as the configuration."""

    def __init__(self, interval: float):
        self.interval = interval
        self._by_source: dict[str, _Budget] = {}

    def near_limit(self, highest: int, silent_for: float) -> int:
        """The highest sequence number that counts as near: what a peer can
        have sent since its last verified packet, with a wide margin."""
        return highest + WINDOW + int(WINDOW_PER_INTERVAL * max(0.0, silent_for) / self.interval)

    def allow(self, source: str, near: bool, now: float) -> bool:
        b = self._by_source.get(source)
        if b is None:
            b = self._by_source[source] = _Budget(
                TokenBucket(NEAR_PER_INTERVAL / self.interval, NEAR_BURST), TokenBucket(FAR_RATE, FAR_BURST))
        return (b.near if near else b.far).take(now)
