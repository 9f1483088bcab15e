"""The restart back-off for a supervised inference server (its readiness is
judged in vigil.core.engine).

Rules:
- Back-off doubles from `base` to `cap` on each restart and resets once the
  server has stayed up `reset_after` seconds (Pacemaker's failure-timeout,
  in spirit): a crash loop slows down, a rare crash restarts at once.
"""

from __future__ import annotations


class Backoff:
    def __init__(self, base: float = 0.5, cap: float = 30.0, reset_after: float = 60.0):
        self.base, self.cap, self.reset_after = base, cap, reset_after
        self.restarts = 0
        self._delay = 0.0
        self._started = 0.0

    def started(self, now: float) -> None:
        self._started = now

    def next_delay(self, now: float) -> float:
        """Seconds to wait before the next restart, given it died at `now`."""
        if now - self._started >= self.reset_after:
            self._delay = 0.0
        self._delay = self.base if self._delay == 0 else min(self.cap, self._delay * 2)
        self.restarts += 1
        return self._delay
