"""Readiness of a supervised inference server from canary results, and the
restart back-off for it.

Rules:
- Not ready until `rise` consecutive canaries succeed; ready until `fall`
  consecutive canaries fail (or the process is known dead: `down()`).
- Each transition carries its cause (the last canary's detail).
- Back-off doubles from `base` to `cap` on each restart and resets once the
  server has stayed up `reset_after` seconds (Pacemaker's failure-timeout,
  in spirit): a crash loop slows down, a rare crash restarts at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReadinessChange:
    ready: bool
    at: float
    cause: str


class ReadinessTracker:
    def __init__(self, rise: int = 1, fall: int = 2):
        self.rise, self.fall = rise, fall
        self.ready = False
        self.reason = "no canary yet"
        self._ok = 0
        self._bad = 0

    def __repr__(self) -> str:
        return f"<ReadinessTracker ready={self.ready} ok={self._ok} bad={self._bad} {self.reason!r}>"

    def canary(self, ok: bool, now: float, detail: str) -> ReadinessChange | None:
        if ok:
            self._ok, self._bad = self._ok + 1, 0
            if not self.ready and self._ok >= self.rise:
                return self._move(True, now, detail)
        else:
            self._ok, self._bad = 0, self._bad + 1
            if not self.ready:
                self.reason = detail
            elif self._bad >= self.fall:
                return self._move(False, now, f"{self._bad} canaries failed in a row; last: {detail}")
        return None

    def down(self, now: float, cause: str) -> ReadinessChange | None:
        self._ok = 0
        self.reason = cause
        return self._move(False, now, cause) if self.ready else None

    def _move(self, ready: bool, now: float, cause: str) -> ReadinessChange:
        self.ready, self.reason = ready, "" if ready else cause
        return ReadinessChange(ready, now, cause)


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
