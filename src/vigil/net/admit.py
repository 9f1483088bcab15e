"""What a heartbeat receiver spends on strangers: token buckets that bound the
Ed25519 verifications one source address can cause (sans-IO: every call takes
`now`, monotonic seconds).

A packet reaches a signature check only after the cheap checks (it parses,
names a tracked node other than us, comes from one of that node's addresses,
and its sequence number is new). What is left is bounded per source address,
in three buckets that never share tokens:

- `near`: the next sequence numbers of the incarnation we hold, the only ones
  a peer sends in steady state. A generous multiple of the heartbeat rate, so
  a peer's own packets are never limited.
- `expected`: the incarnation the node's own member record names, while we
  hold none of it (we restarted, or the peer did and its new record is read).
  Only the node may write its member record (per-node etcd roles), so this is
  a trustworthy hint; a node without one behaves as before (`far`).
- `far`: anything else that could be authentic (an incarnation no record
  names yet, or a sequence number beyond what the peer can have sent since
  we last heard it), and any (incarnation, sequence) whose packet already
  failed a signature check (FailedClaims): a few per second.

Why a blind flood (one that does not see the peer's packets) cannot starve a
peer: each incarnation's sequence numbers start at a secret random 62-bit
value (vigil.agent.heartbeat), never written to any record, so a forged
packet cannot aim at the near window (it lands in `far`, or below the window
and is `replayed` without a check); a forged packet naming a random
incarnation lands in `far`, never in `expected`; and once a forged packet
fails, its (incarnation, sequence) pays from `far` (FailedClaims), so a lucky
guess repeated drains `near` or `expected` once, not again and again. The
peer's first packet after either side restarts is in `expected`, every later
one in `near`.

What is left (documented, not defended; the cost of checks stays bounded):
- An attacker who sees the wire (on path) knows the incarnation and the
  sequence numbers: it can drain `near` with forged packets at the next
  numbers, or send one forged packet with each next (incarnation, sequence)
  before the peer's own, which then pays from `far` with the attacker's
  flood. The peer is suspected while that lasts: heartbeat links belong on
  networks strangers cannot tap, and a second link on another path keeps its
  own buckets (they are per source address).
- An attacker who knows the current incarnation without seeing the packets
  (it reads member records, or guesses the restart time: incarnations are
  microsecond timestamps) can drain `expected` with random sequence numbers;
  while it does, the peer's first packet after a restart is starved as it
  was without the hint (one verified packet ends that: `near` from then on).
- A restarted peer whose new record we have not read yet pays from `far`
  until we have: a blind flood starves it that long.

The buckets are per (source address, node named), not per node: a flood
spoofing one link's address leaves the node's other links untouched. A
source is checked to be one of the named node's addresses first, so on
real machines that is one bucket set per link; where nodes share an address
(a lab on loopback) each still has its own, and one peer's packets never
spend another's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

NEAR_PER_INTERVAL = 8.0  # verifications per heartbeat interval: copies, extras and reordering fit
NEAR_BURST = 64.0  # a backlog after a local stall of a few seconds
EXPECTED_PER_INTERVAL = 2.0  # one packet starts the window; then the peer is near
EXPECTED_BURST = 8.0
FAR_RATE = 2.0  # per second: a peer restarts rarely
FAR_BURST = 4.0
WINDOW = 64  # sequence numbers ahead of the highest verified one that count as near at once
WINDOW_PER_INTERVAL = 4.0  # and this many more per heartbeat interval of silence
FAILED = 128  # (incarnation, sequence) claims that failed a check, remembered per node
NEAR, EXPECTED, FAR = "near", "expected", "far"


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
    expected: TokenBucket
    far: TokenBucket


class VerifyBudget:
    """Per source address, how many signature checks it may still cause.

    Sources are only ever addresses of tracked peers (the receiver checks the
    source first), so the table is as small as the configuration."""

    def __init__(self, interval: float):
        self.interval = interval
        self._by_source: dict[tuple[str, str], _Budget] = {}

    def near_limit(self, highest: int, silent_for: float) -> int:
        """The highest sequence number that counts as near: what a peer can
        have sent since its last verified packet, with a wide margin."""
        return highest + WINDOW + int(WINDOW_PER_INTERVAL * max(0.0, silent_for) / self.interval)

    def allow(self, source: tuple[str, str], kind: str, now: float) -> bool:
        """Spend one check of `kind` (NEAR, EXPECTED or FAR) for `source` (address,
        node named), if any is left."""
        b = self._by_source.get(source)
        if b is None:
            per = 1.0 / self.interval
            b = self._by_source[source] = _Budget(
                TokenBucket(NEAR_PER_INTERVAL * per, NEAR_BURST),
                TokenBucket(EXPECTED_PER_INTERVAL * per, EXPECTED_BURST), TokenBucket(FAR_RATE, FAR_BURST))
        return getattr(b, kind).take(now)


class FailedClaims:
    """Per node, the last FAILED (incarnation, sequence) pairs whose packet
    failed its signature check: a packet repeating one pays from `far`. Filled
    only as fast as the buckets allow checks, so a flood cannot flush it faster
    than it costs."""

    def __init__(self) -> None:
        self._by_node: dict[str, dict[tuple[int, int], None]] = {}

    def __contains__(self, claim: tuple[str, int, int]) -> bool:
        node, inc, seq = claim
        held = self._by_node.get(node)
        return held is not None and (inc, seq) in held

    def add(self, node: str, inc: int, seq: int) -> None:
        held = self._by_node.setdefault(node, {})
        held[(inc, seq)] = None
        if len(held) > FAILED:
            del held[next(iter(held))]

    def forget(self, node: str) -> None:
        self._by_node.pop(node, None)
