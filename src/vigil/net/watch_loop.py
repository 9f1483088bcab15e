"""The asyncio side of a PeerWatch (vigil.core.peers): look at the peers when
one of them is due, not on a fixed 100 Hz beat.

Contract: `run()` calls `watch.tick` and hands its transitions to `on_tick`,
then sleeps until `watch.due` (at most the watch's nap, 100 ms); the owner
calls `poke()` after every `watch.deliver`, which re-arms the sleep when the
delivery moved `due` earlier, so no deadline is looked at late, and may call
`look()` from a wake of its own (which re-arms the sleep to the new `due`). A callback
that raises ends `run()` with that exception, as any task would.

With a heartbeat thread (`thread=`, vigil.net.pacer) the thread wakes at `due`,
at its real-time priority, and hands this loop a look as of that instant, after
the datagrams it stamped up to then: the detectors are judged at the thread's
time, so a loop that runs late (a starved CPU, sixty agents on two cores)
suspects a silent peer at the same instant as an idle one would, and its own
lateness is not forgiven on the peers (nothing it judges was timed by it).
This loop then wakes by itself only FALLBACK after `due` (and after now), in
case the thread did not; a look older than the last one is dropped (time only
moves forward).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from vigil.core.peers import PeerTransition, PeerWatch

if TYPE_CHECKING:
    from vigil.net.pacer import Pacer

# s: with a heartbeat thread, this loop looks by itself this long after `due` only if
# the thread has not handed it that look (a wedged thread; never seen).
FALLBACK = 0.5


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class WatchLoop:
    def __init__(self, watch: PeerWatch, now: Callable[[], float],
                 on_tick: Callable[[list[PeerTransition]], None], thread: "Pacer | None" = None):
        self.watch, self.now, self.on_tick, self.thread = watch, now, on_tick, thread
        self._wake: asyncio.Future[None] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self._last = float("-inf")  # the time of the last look
        self.looks = 0  # how often the peers were looked at (run or look), for the benches
        self.thread_looks = 0  # of those, the looks the heartbeat thread handed us
        self.running = False
        if thread is not None:
            thread.look_at(lambda: watch.due, self._thread_look)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.running = True
        try:
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
        finally:
            self.running = False  # a look the thread hands after this is dropped (stopping)

    def look(self, at: float | None = None) -> None:
        """Look now (or as of `at`, the heartbeat thread's time), from the owner's
        own periodic wake (the heartbeat sender's): the next wake of our own moves
        to the new `due`, so an idle observer wakes once per heartbeat interval for both."""
        now = self.now() if at is None else at
        if now < self._last:
            return  # a look the thread handed us after a later one of ours
        self._last = now
        self.looks += 1
        self.on_tick(self.watch.tick(now))
        if self._handle is not None:
            self._handle.cancel()
            self._arm(asyncio.get_running_loop())

    def _thread_look(self, at: float) -> None:
        if self.running:
            self.thread_looks += 1
            self.look(at)

    def poke(self) -> None:
        """A delivery happened: wake sooner if it moved the watch's due earlier."""
        if self._handle is not None and self.watch.due < self._armed:
            self._handle.cancel()
            self._arm(asyncio.get_running_loop())

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._wake is not None
        earlier, self._armed = self.watch.due < self._armed, self.watch.due
        delay = max(0.0, self._armed - self.now())
        if self.thread is not None:  # the thread hands us the looks; ours is the fallback
            delay += FALLBACK
            if earlier:  # (a later due the thread sees at its next wake, LOOK_REPEAT at most)
                self.thread.rearm()
        self._handle = loop.call_later(delay, _wake, self._wake)
