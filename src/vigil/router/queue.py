"""The router's queue of requests waiting for a slot on any eligible node.

First come, first served: a request woken for a slot that someone else took
keeps its place at the head. Admission (vigil.core.admission) decides on
arrival whether a request may wait at all; one that waited twice the queue
wait without a slot is shed late (counted apart: it should not happen when
the drain estimate is right).
"""

from __future__ import annotations

import asyncio
import collections

from vigil.core.admission import Admission, Shed
from vigil.core.routing import Backend


class SlotQueue:
    def __init__(self, admission: Admission):
        self.admission = admission
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.shed_late = 0

    def __len__(self) -> int:
        return len(self.waiters)

    async def wait(self, pool: list[Backend], admitted: bool) -> Shed | None:
        """Wait for a slot; a Shed if not admitted (reason set) or not served within
        twice the queue wait (reason empty)."""
        if not admitted:
            slots = sum(b.limit.slots for b in pool)
            latency = max((b.limit.latency for b in pool), default=0.0)
            shed = self.admission.may_wait(len(self.waiters), slots, latency)
            if shed is not None:
                return shed
        fut = asyncio.get_running_loop().create_future()
        self.waiters.appendleft(fut) if admitted else self.waiters.append(fut)
        if any(b.has_room() for b in pool):  # room nobody was woken for: the head takes it
            self.wake(1)
        try:
            await asyncio.wait_for(fut, 2 * self.admission.queue_wait)
        except asyncio.TimeoutError:
            self.shed_late += 1
            return Shed(self.admission.queue_wait, "")
        finally:
            if not fut.done():
                fut.cancel()
            try:
                self.waiters.remove(fut)
            except ValueError:
                pass
        return None

    def wake(self, n: int = 1) -> None:
        for fut in list(self.waiters):
            if n <= 0:
                break
            if not fut.done():
                fut.set_result(None)
                self.waiters.remove(fut)
                n -= 1
