"""The injected clock. Everything that needs time takes a Clock; core/ takes
plain `now` floats instead. `now()` is monotonic seconds, `wall()` is Unix
time for records that cross processes (events, leadership history)."""

from __future__ import annotations

import asyncio
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


async def woken(event: asyncio.Event, within: float | None) -> bool:
    """Wait for `event` at most `within` seconds (None: for ever) on the
    running loop's clock; True if it was set. Cheaper than
    `asyncio.wait_for(event.wait(), within)`, which starts a task per wait,
    and these waits run several times a second on every agent."""
    try:
        async with asyncio.timeout(within):
            await event.wait()
        return True
    except TimeoutError:
        return False
