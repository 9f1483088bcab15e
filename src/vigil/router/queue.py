"""The router's queue of requests waiting for a slot on any eligible node.

First come, first served: a request woken for a slot that someone else took
keeps its place at the head. Whether a request may wait at all is decided
before it comes here (vigil.core.request_plan asks vigil.core.admission); one
that waited twice the queue wait without a slot is shed late (counted apart:
it should not happen when the drain estimate is right).
"""

from __future__ import annotations

import asyncio
import collections

from vigil.core.routing import Backend


class SlotQueue:
    def __init__(self, queue_wait: float):
        self.queue_wait = queue_wait
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.shed_late = 0

    def __len__(self) -> int:
        return len(self.waiters)

    async def wait(self, pool: list[Backend], front: bool) -> bool:
        """Wait for a slot on any of `pool`, at the head of the queue if `front`
        (it waited before); False if none came within twice the queue wait."""
        fut = asyncio.get_running_loop().create_future()
        self.waiters.appendleft(fut) if front else self.waiters.append(fut)
        if any(b.has_room() for b in pool):  # room nobody was woken for: the head takes it
            self.wake(1)
        try:
            await asyncio.wait_for(fut, 2 * self.queue_wait)
        except asyncio.TimeoutError:
            self.shed_late += 1
            return False
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self.waiters.remove(fut)
            except ValueError:
                pass
        return True

    def wake(self, n: int = 1) -> None:
        for fut in list(self.waiters):
            if n <= 0:
                break
            if not fut.done():
                fut.set_result(None)
                self.waiters.remove(fut)
                n -= 1
