"""PayloadPublisher: the generations this node's model server works on,
registered in etcd under this node's lease (vigil.core.payloads decides
what to write; this performs it once a second). Best effort: while etcd is
away nothing is written, and a new session writes everything again."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from vigil.clock import Clock
from vigil.core.payloads import FOREIGN, Payload, PayloadBook
from vigil.errors import StoreError
from vigil.store.base import Expect, Store
from vigil.store.keys import Keys

log = logging.getLogger(__name__)

SYNC_EVERY = 1.0  # s


class PayloadPublisher:
    def __init__(self, store: Store, keys: Keys, node: str, clock: Clock, lease: Callable[[], int]):
        """`lease()`: this node's session lease id, 0 while it has none."""
        self.store, self.keys, self.node, self.clock, self.lease = store, keys, node, clock, lease
        self.book = PayloadBook()
        self.reported: tuple[Payload, ...] = ()

    def report(self, payloads: tuple[Payload, ...]) -> None:
        self.reported = payloads

    async def run(self) -> None:
        while True:
            await asyncio.sleep(SYNC_EVERY)
            lease = self.lease()
            if lease:
                try:
                    await self.sync(lease)
                except StoreError as e:
                    log.debug("payload records not written: %s", e)

    async def sync(self, lease: int) -> None:
        now = self.clock.wall()
        puts, deletes = self.book.plan(list(self.reported), now, lease)
        for p in puts:
            key, created = self.keys.payload(p.id), self.book.create_revision(p.id)
            ok, rev = await self.store.txn([Expect(key, create_revision=created)],
                                           [(key, json.dumps(p.record(self.node)), lease)])
            if not ok:
                log.info("payload %s is registered by another node (a stream continued there): "
                         "not overwritten", p.id)
            self.book.put(p, now, (created or rev) if ok else FOREIGN)
        for pid in deletes:
            created = self.book.create_revision(pid)
            if created > 0:
                await self.store.delete_if_created(self.keys.payload(pid), created)
            self.book.deleted(pid)
