"""RecordPublisher: our member record in etcd (`members/<node>`, under our
session's lease), written when our state changes, never on a timer.

Contract: `request()` publishes soon, in the background: one put in flight
at a time, and a request made meanwhile runs once more after it (the record
is built when sent, so the last put carries the newest state; two puts in
flight could land in either order). A put that fails (etcd away or
overloaded) is logged; `retry()` asks again unless one is under way or the
retry backoff has not passed (0.5 s doubling to 8 s, each drawn from its
upper half at random; reset by a put that lands): every agent retrying each
cycle would keep an overloaded etcd overloaded. `request()` (a change of
state) does not wait for it. `unpublished()` says whether
our suspicions differ from what the record in etcd says (peers read them
before they fence)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Callable

from vigil.clock import Clock
from vigil.errors import VigilError
from vigil.store.member_record import MemberRecord
from vigil.store.registry import Registry

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 0.5, 8.0  # seconds between retries of a failed put


class RecordPublisher:
    def __init__(self, registry: Registry, clock: Clock, build: Callable[[], MemberRecord],
                 lease: Callable[[], int | None], suspects: Callable[[], list[str]]):
        """`build`: the record as of now; `lease`: our session's lease while it is
        held, else None; `suspects`: the suspicions our record lists now."""
        self.registry, self.clock, self.build, self.lease, self.suspects = registry, clock, build, lease, suspects
        self._failures, self._retry_at = 0, 0.0
        self.published_suspects: list[str] = []  # as last written to our member record
        self._task: asyncio.Task | None = None
        self._again = False

    def request(self) -> None:
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def retry(self) -> None:
        if (self._task is None or self._task.done()) and self.clock.now() >= self._retry_at:
            self.request()

    def unpublished(self) -> bool:
        return self.suspects() != self.published_suspects

    async def register(self, lease: int) -> None:
        """Write the record under `lease` now. Raises StoreError."""
        record = self.build()
        await self.registry.register(record, lease)
        self.published_suspects = list(record.suspects)
        self._failures, self._retry_at = 0, 0.0

    async def _loop(self) -> None:
        while self._again:
            self._again = False
            lease = self.lease()
            if lease is None:
                continue
            try:
                await self.register(lease)
            except (VigilError, asyncio.TimeoutError, OSError) as e:
                self._failures += 1
                backoff = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self._failures - 1, 8))
                self._retry_at = self.clock.now() + backoff * random.uniform(0.5, 1.0)
                log.warning("could not publish the member record (retry in about %.1f s): %s", backoff, e)
