"""A manual clock for tests and simulations (trio's MockClock, minimal)."""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 1000.0, wall_offset: float = 1.7e9):
        self._now = start
        self._wall_offset = wall_offset

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:.3f}>"

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def to_wall(self, monotonic: float) -> float:
        return monotonic + self._wall_offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self._now += seconds
        return self._now
