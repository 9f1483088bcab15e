"""The event log: every transition, with its cause and timings.

Contract:
- `record()` never blocks and never raises: events are queued locally and a
  background task writes them to etcd in order; while etcd is unreachable
  they wait (up to `max_pending`, oldest dropped first and counted).
- Event ids sort by time: `<wall microseconds, 16 hex>-<node>-<seq>`.
- `prune(keep)` deletes all but the newest `keep` events (the leader calls it).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque

from vigil.clock import Clock
from vigil.core.records import JSON, JSONable
from vigil.errors import StoreError
from vigil.store.base import Store
from vigil.store.keys import Keys
from vigil.store.records import BadRecord, parse_event
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BATCH = 32  # events per transaction (etcd allows 128 operations in one)
BATCH_BYTES = 256 * 1024  # and this many bytes of them (etcd refuses requests over 1.5 MiB)


class EventLog:
    def __init__(self, store: Store, keys: Keys, node: str, clock: Clock, max_pending: int = 10000):
        self.store, self.keys, self.node, self.clock = store, keys, node, clock
        self._pending: deque[tuple[str, dict[str, JSONable]]] = deque()
        self.max_pending = max_pending
        self.dropped = 0
        self.written = 0
        self._seq = itertools.count(1)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # the flush loop and a final flush() never interleave
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Events recorded but not yet written to etcd."""
        return len(self._pending)

    def record(self, kind: str, cause: str, **details: JSONable) -> dict[str, JSONable]:
        at = self.clock.wall()
        event: dict[str, JSONable] = {"at": at, "node": self.node, "kind": kind, "cause": cause, **details}
        event_id = f"{int(at * 1e6):016x}-{self.node}-{next(self._seq)}"
        event["id"] = event_id
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((event_id, event))
        self._wake.set()
        log.info("event %s: %s", kind, cause, extra={"vigil_event": kind})  # VIGIL_EVENT in the journal
        return event

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def flush(self, timeout: float = 2.0) -> None:
        """Write what is pending now (used on graceful stop)."""
        try:
            await asyncio.wait_for(self._flush_once(), timeout)
        except (asyncio.TimeoutError, StoreError):
            pass

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_once()
            except StoreError as e:
                log.debug("event log waiting for etcd: %s", e)
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _flush_once(self) -> None:
        """Write the pending events, up to BATCH in one transaction: a failover
        records several events on every node at once, and one request each would
        load etcd when it is busiest. A batch that fails stays pending, whole."""
        async with self._lock:
            while self._pending:
                batch: list[tuple[str, str]] = []  # (event id, its JSON)
                size = 0
                for event_id, event in itertools.islice(self._pending, BATCH):
                    text = json.dumps(event, sort_keys=True)
                    if batch and size + len(text) > BATCH_BYTES:
                        break
                    batch.append((event_id, text))
                    size += len(text)
                await self.store.txn([], [(self.keys.event(i), text, 0) for i, text in batch])
                done = {i for i, _ in batch}  # record() may have dropped some meanwhile
                while self._pending and self._pending[0][0] in done:
                    self._pending.popleft()
                self.written += len(batch)


async def read_events(store: Store, keys: Keys, limit: int = 0) -> list[dict[str, JSON]]:
    """The newest `limit` events (all if 0), oldest first. An event no agent wrote
    (vigil.store.records.parse_event) is listed as kind "corrupt" with the problem."""
    kvs, _ = await store.range(keys.events)
    out: list[dict[str, JSON]] = []
    for kv in kvs[-limit:] if limit else kvs:
        ev = parse_event(kv.key, kv.value)
        out.append({"id": kv.key, "at": 0.0, "node": "?", "kind": "corrupt", "cause": ev.problem}
                   if isinstance(ev, BadRecord) else ev)
    return out


async def prune_events(store: Store, keys: Keys, keep: int) -> int:
    kvs, _ = await store.range(keys.events)
    extra = kvs[:-keep] if keep else kvs
    for kv in extra:
        await store.delete(kv.key)
    return len(extra)
