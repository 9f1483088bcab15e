"""An in-memory Store with etcd's semantics: revisions, leases with expiry,
atomic create, watches from a revision, compaction.

Lease expiry follows the injected clock. With a real clock, call `start()`
inside a running loop so a task expires leases on time; with a FakeClock,
`expire()` after advancing (every operation also expires what is due).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
from typing import AsyncIterator

from vigil.clock import Clock, SystemClock
from vigil.errors import LeaseNotFound, StoreUnavailable, WatchCompacted
from vigil.store.base import Expect, KeyValue, Lease, Store, WatchEvent, prefix_end


class MemoryStore(Store):
    def __init__(self, clock: Clock | None = None, min_ttl: int = 1, scan: float = 0.0):
        """`scan`: revoke expired leases only once per `scan` seconds, as etcd's lessor
        does every 0.5 s (0: at once); an expired lease cannot be renewed meanwhile."""
        self.clock = clock or SystemClock()
        self.min_ttl, self.scan, self._scanned = min_ttl, scan, -1
        self.revision = 1
        self.compacted = 0
        self._available = True
        self.refused = 0  # calls that failed while unavailable
        self._kv: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # _kv's keys in order, for ranges
        self._history: list[WatchEvent] = []
        self._leases: dict[int, tuple[int, float]] = {}  # id -> (ttl, expires_at)
        self._ids = itertools.count(0x1000)
        self._changed = asyncio.Condition() if _in_loop() else None
        self._expiry_task: asyncio.Task | None = None
        self._granted = asyncio.Event()
        self._notifying: asyncio.Task | None = None  # held: a task nobody references may be collected

    @property
    def available(self) -> bool:
        """Set False to simulate an unreachable cluster: every call raises
        StoreUnavailable, and so does every watch that asked not to resume."""
        return self._available

    @available.setter
    def available(self, value: bool) -> None:
        self._available = value
        if not value and self._changed is not None and _in_loop():
            self._notifying = asyncio.get_running_loop().create_task(self._notify())  # watches see it now

    def __repr__(self) -> str:
        return f"<MemoryStore rev={self.revision} keys={len(self._kv)} leases={len(self._leases)}>"

    def start(self) -> None:
        """Expire leases on time in the background (real clock only)."""
        self._cond()
        self._expiry_task = asyncio.get_running_loop().create_task(self._expiry_loop())

    def expire(self) -> list[int]:
        """Expire every lease due at the clock's now; returns their ids."""
        now = self.clock.now()
        if self.scan:
            if math.floor(now / self.scan) == self._scanned:
                return []
            self._scanned = math.floor(now / self.scan)
        due = [lid for lid, (_, at) in self._leases.items() if at <= now]
        for lid in due:
            self._drop_lease(lid)
        return due

    # -- Store -------------------------------------------------------------
    async def get(self, key: str) -> KeyValue | None:
        self._enter()
        return self._kv.get(key)

    def peek(self, key: str) -> KeyValue | None:
        """`key` as it stands now, outside the Store contract: for a simulation's
        monitor, which must not count as a client (no availability check)."""
        return self._kv.get(key)

    async def range(self, prefix: str, end: str | None = None) -> tuple[list[KeyValue], int]:
        self._enter()
        end = prefix_end(prefix) if end is None else end
        keys = self._keys[bisect.bisect_left(self._keys, prefix):bisect.bisect_left(self._keys, end)]
        return [self._kv[k] for k in keys], self.revision

    async def put(self, key: str, value: str, lease: int = 0) -> int:
        self._enter()
        if lease and lease not in self._leases:
            raise LeaseNotFound(f"lease {lease:x} not found")
        self.revision += 1
        self._put(key, value, lease)
        return self.revision

    async def txn(self, expect: list[Expect], puts: list[tuple[str, str, int]],
                  deletes: list[str] = ()) -> tuple[bool, int]:
        self._enter()
        for e in expect:
            kv = self._kv.get(e.key)
            if ((e.create_revision is not None and (kv.create_revision if kv else 0) != e.create_revision)
                    or (e.mod_revision is not None and (kv.mod_revision if kv else 0) != e.mod_revision)):
                return False, self.revision
        for _, _, lease in puts:
            if lease and lease not in self._leases:
                raise LeaseNotFound(f"lease {lease:x} not found")
        self.revision += 1  # one revision for the whole transaction, as etcd's
        for key, value, lease in puts:
            self._put(key, value, lease)
        for key in deletes:
            self._delete(key, bump=False)
        return True, self.revision

    async def delete_prefix(self, prefix: str) -> int:
        self._enter()
        keys, _ = await self.range(prefix)
        if keys:
            self.revision += 1
        for kv in keys:
            self._delete(kv.key, bump=False)
        return len(keys)

    async def delete(self, key: str) -> bool:
        self._enter()
        return self._delete(key)

    async def create(self, key: str, value: str, lease: int = 0) -> tuple[bool, KeyValue]:
        self._enter()
        if key in self._kv:
            return False, self._kv[key]
        await self.put(key, value, lease)
        return True, self._kv[key]

    async def delete_if_created(self, key: str, create_revision: int) -> bool:
        self._enter()
        kv = self._kv.get(key)
        if kv is None or kv.create_revision != create_revision:
            return False
        return self._delete(key)

    async def grant(self, ttl: int) -> Lease:
        self._enter()
        ttl = max(int(ttl), self.min_ttl)
        lid = next(self._ids)
        self._leases[lid] = (ttl, self.clock.now() + ttl)
        self._granted.set()
        return Lease(lid, ttl)

    async def keepalive(self, lease_id: int) -> int:
        self._enter()
        if lease_id not in self._leases or self._leases[lease_id][1] <= self.clock.now():
            raise LeaseNotFound(f"lease {lease_id:x} not found")  # etcd: once the expired lease is revoked
        ttl, _ = self._leases[lease_id]
        self._leases[lease_id] = (ttl, self.clock.now() + ttl)
        return ttl

    async def revoke(self, lease_id: int) -> bool:
        self._enter()
        return self._drop_lease(lease_id)

    async def lease_left(self, lease_id: int) -> tuple[int, int]:
        self._enter()
        if lease_id not in self._leases:
            return -1, 0
        ttl, expiry = self._leases[lease_id]
        return max(0, math.floor(expiry - self.clock.now())), ttl

    async def watch(self, prefix: str, start_revision: int, resume: bool = True,
                    range_end: str | None = None) -> AsyncIterator[WatchEvent]:
        """With `resume`, a watch outlives the store being unavailable (it has no
        members to lose); without it, it raises StoreUnavailable then."""
        self._enter()
        if start_revision and start_revision <= self.compacted:
            raise WatchCompacted(self.compacted)
        nxt = start_revision or self.revision + 1
        cond = self._cond()
        wanted = (lambda k: k.startswith(prefix)) if range_end is None else (lambda k: prefix <= k < range_end)
        while True:
            first = bisect.bisect_left(self._history, nxt, key=_revision)  # revisions only grow
            seen = self._history[first:]
            for ev in [e for e in seen if wanted(e.key)]:
                if not (resume or self._available):
                    raise StoreUnavailable("memory store marked unavailable: the watch ends")
                nxt = ev.revision + 1
                yield ev
            if seen:  # past changes under other prefixes too, or the wait below never waits
                nxt = max(nxt, seen[-1].revision + 1)
            async with cond:
                while not any(e.revision >= nxt for e in self._history[-1:]):
                    if not (resume or self._available):
                        raise StoreUnavailable("memory store marked unavailable: the watch ends")
                    await cond.wait()

    async def compact(self, revision: int) -> None:
        self._enter()
        self.compacted = max(self.compacted, revision - 1)
        self._history = [e for e in self._history if e.revision >= revision]

    async def close(self) -> None:
        if self._expiry_task:
            self._expiry_task.cancel()

    # -- internals ---------------------------------------------------------
    def _enter(self) -> None:
        if not self.available:
            self.refused += 1
            raise StoreUnavailable("memory store marked unavailable")
        self.expire()

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    def _put(self, key: str, value: str, lease: int) -> None:
        old = self._kv.get(key)
        kv = KeyValue(key, value, old.create_revision if old else self.revision, self.revision,
                      (old.version + 1) if old else 1, lease)
        if old is None:
            bisect.insort(self._keys, key)
        self._kv[key] = kv
        self._record(WatchEvent("put", key, value, self.revision, kv.create_revision, lease))

    def _delete(self, key: str, bump: bool = True) -> bool:
        if key not in self._kv:
            return False
        old = self._kv.pop(key)
        del self._keys[bisect.bisect_left(self._keys, key)]
        if bump:
            self.revision += 1
        self._record(WatchEvent("delete", key, "", self.revision, old.create_revision))
        return True

    def _drop_lease(self, lease_id: int) -> bool:
        if self._leases.pop(lease_id, None) is None:
            return False
        keys = [k for k, kv in self._kv.items() if kv.lease == lease_id]
        if keys:
            self.revision += 1  # one revision for all of its keys, as etcd's
        for key in keys:
            self._delete(key, bump=False)
        return True

    def _record(self, ev: WatchEvent) -> None:
        self._history.append(ev)
        if self._changed is not None and _in_loop():
            asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._cond():
            self._cond().notify_all()

    async def _expiry_loop(self) -> None:
        # Sleeps until the nearest expiry (a grant, which may expire sooner, wakes it),
        # so a simulation on virtual time pays per lease, not per 50 ms.
        while True:
            self.expire()
            self._granted.clear()
            nearest = min((at for _, at in self._leases.values()), default=None)
            try:
                async with asyncio.timeout(None if nearest is None else max(0.0, nearest - self.clock.now())):
                    await self._granted.wait()
            except TimeoutError:
                pass


def _revision(ev: WatchEvent) -> int:
    return ev.revision


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
