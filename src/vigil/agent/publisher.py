"""RecordPublisher: our member record in etcd (`members/<node>`, under our
session's lease), written when our state changes, never on a timer.

Contract: `request()` publishes soon, in the background: one put in flight
at a time, and a request made meanwhile runs once more after it (the record
is built when sent, so the last put carries the newest state; two puts in
flight could land in either order). A put that fails (etcd away) is logged;
`retry()` asks again unless one is under way. `unpublished()` says whether
our suspicions differ from what the record in etcd says (peers read them
before they fence)."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from vigil.errors import VigilError
from vigil.store.member_record import MemberRecord
from vigil.store.registry import Registry

log = logging.getLogger(__name__)


class RecordPublisher:
    def __init__(self, registry: Registry, build: Callable[[], MemberRecord],
                 lease: Callable[[], int | None], suspects: Callable[[], list[str]]):
        """`build`: the record as of now; `lease`: our session's lease while it is
        held, else None; `suspects`: our detector's suspicions now."""
        self.registry, self.build, self.lease, self.suspects = registry, build, lease, suspects
        self.published_suspects: list[str] = []  # as last written to our member record
        self._task: asyncio.Task | None = None
        self._again = False

    def request(self) -> None:
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def retry(self) -> None:
        if self._task is None or self._task.done():
            self.request()

    def unpublished(self) -> bool:
        return self.suspects() != self.published_suspects

    async def register(self, lease: int) -> None:
        """Write the record under `lease` now. Raises StoreError."""
        record = self.build()
        await self.registry.register(record, lease)
        self.published_suspects = list(record.suspects)

    async def _loop(self) -> None:
        while self._again:
            self._again = False
            lease = self.lease()
            if lease is None:
                continue
            try:
                await self.register(lease)
            except (VigilError, asyncio.TimeoutError, OSError) as e:
                log.warning("could not publish the member record: %s", e)
