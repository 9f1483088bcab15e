"""The injected clock. Everything that needs time takes a Clock; core/ takes
plain `now` floats instead. `now()` is monotonic seconds, `wall()` is Unix
time for records that cross processes (events, leadership history)."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    def wall(self) -> float: ...

    def to_wall(self, monotonic: float) -> float: ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def to_wall(self, monotonic: float) -> float:
        """Convert a monotonic instant to Unix time (for cross-process records)."""
        return time.time() + (monotonic - time.monotonic())
