"""The heartbeat thread's timers (vigil.net.pacer): fixed-rate and one-shot
callbacks ordered by when they are due.

Contract: any thread may `push`; one thread (the pacer's) takes what is due
with `pop_due`, which re-arms a fixed-rate timer from when it was due, not
from when it ran (a late run does not push the later ones back), and keeps
`late`, the longest a timer was taken after it was due.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from typing import Callable


class Timers:
    def __init__(self, now: Callable[[], float]):
        self.now = now
        self.late = 0.0  # s
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, float, Callable[[], object]]] = []  # (when, seq, every, fn)
        self._seq = itertools.count()

    def push(self, when: float, interval: float, fn: Callable[[], object]) -> None:
        """`fn` at `when`, then every `interval` s (0: once)."""
        with self._lock:
            heapq.heappush(self._heap, (when, next(self._seq), interval, fn))

    def next_due(self) -> float | None:
        """When the first timer is due (None: no timer)."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def pop_due(self) -> Callable[[], object] | None:
        """A callback due now (None: none is), a fixed-rate one re-armed."""
        now = self.now()
        with self._lock:
            if not self._heap or self._heap[0][0] > now:
                return None
            when, _, interval, fn = heapq.heappop(self._heap)
            if interval:
                heapq.heappush(self._heap, (max(when + interval, now), next(self._seq), interval, fn))
        self.late = max(self.late, now - when)
        return fn
