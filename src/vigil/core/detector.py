"""Phi accrual failure detector (Hayashibara et al. 2004, Akka's form).

Rules:
- Pure: every method takes `now` (seconds, monotonic) and returns values.
- phi(now) is the suspicion level: -log10 of the probability that a heartbeat
  arrives later than `now` given the inter-arrival history. A peer is
  suspected when phi >= threshold.
- Inter-arrival times are modelled as a normal distribution with mean
  `mean + acceptable_pause` and standard deviation at least `min_std`, so a
  very regular sender does not make the detector hair-triggered.
- `forgive(seconds)` credits a window in which the *observer* was stalled
  (its loop ran late): that silence is not held against the peer, and the
  inter-arrival sample spanning it is not recorded (Cassandra's local-pause
  guard).
- `heartbeat(now, learn=False)` records an arrival without learning the gap
  before it: the caller (vigil.core.peers) passes it while the peer is
  suspected, because that gap was a fault (a crash, a freeze, a partition),
  not the sender's jitter. Learnt, one 5 s outage would stretch the mean and
  deviation for the next 200 heartbeats and delay the next detection from
  ~0.25 s to ~3.5 s (found by the chaos bench: issue 9 #10).
"""

from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorSettings:
    """Tuning of one detector; see docs/configuration.md for the trade-off."""

    threshold: float = 8.0
    min_std: float = 0.02
    acceptable_pause: float = 0.04
    first_interval: float = 0.1
    max_samples: int = 200

    def detection_time(self, mean: float | None = None) -> float:
        """Silence after which phi crosses the threshold for a steady sender."""
        mean = self.first_interval if mean is None else mean
        return mean + self.acceptable_pause + _z_for_phi(self.threshold) * self.min_std


@functools.lru_cache(maxsize=16)
def _z_for_phi(phi: float) -> float:
    """Inverse of the logistic approximation used in `_phi`, by bisection."""
    lo, hi = 0.0, 50.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if _phi_of_z(mid) < phi:
            lo = mid
        else:
            hi = mid
    return hi


def _phi_of_z(y: float) -> float:
    # Akka's logistic approximation of the normal tail, -log10(1/(1+exp(a))),
    # written as a stable softplus so a long silence cannot overflow.
    a = y * (1.5976 + 0.070566 * y * y)
    softplus = a + math.log1p(math.exp(-a)) if a > 0 else math.log1p(math.exp(a))
    return softplus / math.log(10)


class PhiAccrualDetector:
    """Suspicion of one peer from the arrival times of its heartbeats."""

    def __init__(self, settings: DetectorSettings):
        self.settings = settings
        self._intervals: deque[float] = deque(maxlen=settings.max_samples)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._last: float | None = None
        self._skip_next_sample = False
        self._suspect_at: float | None = None  # cache of `suspect_at()`; None: to compute

    def __repr__(self) -> str:
        return (f"<PhiAccrualDetector samples={len(self._intervals)} "
                f"mean={self.mean():.3f} std={self.std():.3f} last={self._last}>")

    @property
    def last_heartbeat(self) -> float | None:
        return self._last

    def heartbeat(self, now: float, learn: bool = True) -> None:
        """Record the arrival of one heartbeat at `now`; with `learn`, the gap
        since the previous one joins the inter-arrival history."""
        if self._last is None:
            self._seed()
        elif self._skip_next_sample or not learn:
            self._skip_next_sample = False
        else:
            self._add(max(0.0, now - self._last))
        self._last = now
        self._suspect_at = None

    def forgive(self, seconds: float, now: float) -> None:
        """Do not count the last `seconds` of silence: the observer was stalled."""
        if self._last is not None and seconds > 0:
            self._last = min(self._last + seconds, now)
            self._skip_next_sample = True
            self._suspect_at = None

    def suspect_at(self) -> float:
        """The instant phi reaches the threshold if nothing arrives before (phi
        grows with the silence alone): callers evaluating often compare `now`
        with it and compute phi only near it. +inf before the first heartbeat."""
        if self._last is None:
            return math.inf
        if self._suspect_at is None:
            z = _z_for_phi(self.settings.threshold)
            self._suspect_at = self._last + self.mean() + self.settings.acceptable_pause + z * self.std()
        return self._suspect_at

    def phi(self, now: float) -> float:
        """Suspicion level at `now`; 0.0 before the first heartbeat."""
        if self._last is None:
            return 0.0
        elapsed = now - self._last
        mean = self.mean() + self.settings.acceptable_pause
        y = (elapsed - mean) / self.std()
        return _phi_of_z(y)

    def is_available(self, now: float) -> bool:
        return self.phi(now) < self.settings.threshold

    def mean(self) -> float:
        if not self._intervals:
            return self.settings.first_interval
        return self._sum / len(self._intervals)

    def std(self) -> float:
        n = len(self._intervals)
        if n == 0:
            return max(self.settings.min_std, self.settings.first_interval / 4)
        var = max(0.0, self._sum_sq / n - (self._sum / n) ** 2)
        return max(self.settings.min_std, math.sqrt(var))

    def _seed(self) -> None:
        # Akka seeds the history with mean ± mean/4 so the first silence is judged sanely.
        first = self.settings.first_interval
        for sample in (first - first / 4, first + first / 4):
            self._add(sample)

    def _add(self, interval: float) -> None:
        if len(self._intervals) == self._intervals.maxlen:
            old = self._intervals[0]
            self._sum -= old
            self._sum_sq -= old * old
        self._intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval


class PauseGuard:
    """Detects that the observer itself stopped looking (a stalled loop, a
    SIGSTOP, a starved CPU): its silence is not the peers'.

    The observer promises when it will look again at the latest (`expect`);
    every look (`tick(now)`) returns the seconds it came later than that
    beyond `tolerance` (0.0 when on time), and the caller forgives exactly
    that much silence on every peer. A pause is counted once: the looks
    queued behind the late one are measured from it.
    """

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self._due: float | None = None
        self.pauses = 0
        self.longest = 0.0

    def expect(self, due: float) -> None:
        """The observer will look again by `due` at the latest."""
        self._due = due

    def tick(self, now: float) -> float:
        due = self._due
        if due is None or now - due <= self.tolerance:
            return 0.0
        late, self._due = now - due, now
        self.pauses += 1
        self.longest = max(self.longest, late)
        return late
