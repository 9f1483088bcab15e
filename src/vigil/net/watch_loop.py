"""The asyncio side of a PeerWatch (vigil.core.peers): look at the peers when
one of them is due, not on a fixed 100 Hz beat.

Contract: `run()` calls `watch.tick` and hands its transitions to `on_tick`,
then sleeps until `watch.due` (at most the watch's nap, 100 ms); the owner
calls `poke()` after every `watch.deliver`, which re-arms the sleep when the
delivery moved `due` earlier, so no deadline is looked at late, and may call
`look()` from a wake of its own (which re-arms the sleep to the new `due`). A callback
that raises ends `run()` with that exception, as any task would.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from vigil.core.peers import PeerTransition, PeerWatch


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WatchLoop:
    def __init__(self, watch: PeerWatch, now: Callable[[], float],
                 on_tick: Callable[[list[PeerTransition]], None]):
        self.watch, self.now, self.on_tick = watch, now, on_tick
        self._wake: asyncio.Future[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self.looks = 0  # how often the peers were looked at (run or look), for the benches

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.look()
            self._wake = loop.create_future()
            self._arm(loop)
            try:
                await self._wake
            finally:
                if self._handle is not None:
                    self._handle.cancel()
                self._wake = self._handle = None

    def look(self) -> None:
        """Look now, from the owner's own periodic wake (the heartbeat sender's):
        the next wake of our own moves to the new `due`, so an idle observer
        wakes once per heartbeat interval for both."""
        self.looks += 1
        self.on_tick(self.watch.tick(self.now()))
        if self._handle is not None:
            self._handle.cancel()
            self._arm(asyncio.get_running_loop())

    def poke(self) -> None:
        """A delivery happened: wake sooner if it moved the watch's due earlier."""
        if self._handle is not None and self.watch.due < self._armed:
            self._handle.cancel()
            self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._wake is not None
        self._armed = self.watch.due
        self._handle = loop.call_later(max(0.0, self._armed - self.now()), _wake, self._wake)
