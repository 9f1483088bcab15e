"""Wait for a condition with a generous deadline (tests never sleep to sync)."""

from __future__ import annotations

import asyncio
from typing import Any, Callable


async def wait_until(cond: Callable[[], Any], timeout: float, what: str, poll: float = 0.01) -> Any:
    """Poll `cond` until it is truthy; return its value. Raises AssertionError
    naming `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = cond()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll)


async def wait_for_value(probe: Callable[[], Any], want: Any, timeout: float, poll: float = 0.1) -> None:
    """Await `probe()` until it returns `want`. Raises AssertionError after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await probe()) != want:
        if loop.time() >= deadline:
            raise AssertionError(f"still {got!r} (want {want!r}) after {timeout:g} s")
        await asyncio.sleep(poll)
