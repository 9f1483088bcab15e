"""Where a decision cycle's snapshot comes from: the watch's mirror of etcd
(vigil.store.mirror, kept by vigil.agent.registry_watch) when it can be
trusted, else one range read.

A range read per cycle sent every member record to every agent every
second: O(N^2) bytes from etcd, which could no longer answer 50 agents'
session keep-alives within 1 s on 2 cores. And when etcd is slow, an agent
that falls back to reading on every cycle makes it slower: 60 agents reading
50 KB each, up to 1/SETTLE times a second, never let it recover.

Contract:
- `get(now)` is the mirror's snapshot while all of these hold: the mirror is
  current (its watch runs and missed nothing); the session's keep-alives land
  (`etcd_answers(now)`: a watch cut off by the network goes silent rather
  than failing); the last range read is younger than MIRROR_RESYNC (a
  resync, as Kubernetes' informers relist); the mirror holds every write of
  ours whose revision we know (`wrote(revision)`: read-your-writes without a
  read); and no role change or write of unknown outcome came since the last
  read (`invalidate()`). Otherwise it reads the range (one request), and the
  mirror follows that read.
- Reads are limited when the mirror is doubted (its watch is not running,
  or the keep-alives fail): at most one per `backoff`·U(0.5, 1) s (seeded: a
  simulation repeats), and after a read that failed, none for as long; `get`
  raises StoreUnavailable meanwhile (a fixed text), which a cycle turns into a
  Wait. The first read, a resync, a read after `invalidate()`, one for a
  write of ours the watch has not brought back yet (the leader's) and, once
  per watch, one while that watch runs but the mirror is not current (it
  started after the mirror's last read: an agent's first read and its
  watch's start race) are not limited: etcd answers, and one read makes the
  mirror current. Limiting that one made a just-restarted agent decide on
  nothing for up to `backoff` (a fenced takeover then took ~850 ms instead
  of ~300 ms); once per watch, because a read the watch has already passed
  is refused by the mirror, and a busy etcd must not get one per cycle.
"""

from __future__ import annotations

import random
from typing import Callable

from vigil.errors import StoreError, StoreUnavailable
from vigil.store.mirror import RegistryMirror
from vigil.store.registry import Registry, Snapshot, parse_snapshot

MIRROR_RESYNC = 30.0  # s: the longest a cycle decides on the mirror without a range read


class SnapshotSource:
    def __init__(self, registry: Registry, mirror: RegistryMirror, etcd_answers: Callable[[float], bool],
                 backoff: float, seed: str):
        self.registry, self.mirror, self._etcd_answers, self.backoff = registry, mirror, etcd_answers, backoff
        self._jitter = random.Random(f"read-{seed}")
        self._read_at = float("-inf")  # when the last range read the mirror follows was sent
        self._reusable = False  # no role change or write of unknown outcome since that read
        self._invalidations = 0
        self._need = 0  # the newest revision of a write of ours the snapshot must hold
        self._next_read = float("-inf")  # no read the mirror is only doubted for before this
        self._retry_at = float("-inf")  # after a failed read: no read at all before this
        self._levelled: int | None = None  # the watch (its start) an unlimited read was made for

    def invalidate(self) -> None:
        """Our role changed, or a write of ours may or may not have landed: the next
        `get` reads etcd (the watch may not have brought the change back yet)."""
        self._reusable = False
        self._invalidations += 1

    def wrote(self, revision: int) -> None:
        """A write of ours landed at `revision`: the next snapshot holds it."""
        self._need = max(self._need, revision)

    def mirror_trusted(self, now: float) -> bool:
        """Whether `get` would decide on the mirror now."""
        return (self.mirror.current and self._reusable and self.mirror.revision >= self._need
                and self._etcd_answers(now) and now - self._read_at < MIRROR_RESYNC)

    async def get(self, now: float) -> Snapshot:
        """The snapshot a cycle decides on (see the module's contract). Raises
        StoreError: the read failed, or a read is not due yet."""
        if self.mirror_trusted(now):
            mirrored = self.mirror.snapshot()
            if mirrored is not None:
                return mirrored
        watch = self.mirror.watch_start
        level = watch is not None and watch != self._levelled and self._etcd_answers(now)
        doubted = (self._reusable and now - self._read_at < MIRROR_RESYNC
                   and not (self.mirror.current and self._etcd_answers(now)))
        if level and doubted:
            self._levelled, doubted = watch, False
        if doubted and now < self._next_read:
            # A fixed text: the cycle's Wait is logged only when it changes.
            raise StoreUnavailable(f"the watch's mirror is not trusted now ({self._why_not()}); etcd is read "
                                   f"at most once per {self.backoff:g} s while so")
        if now < self._retry_at:
            raise StoreUnavailable(f"etcd did not answer the last read; reading again within {self.backoff:g} s")
        invalidations = self._invalidations
        self._next_read = now + self.backoff * self._jitter.uniform(0.5, 1.0)
        try:
            kvs, rev = await self.registry.read()
        except StoreError:
            self._retry_at = self._next_read
            raise
        # Reusable only if no role change or unknown write of ours came during the read; a
        # read the watch is already past (the mirror refuses it) leaves the mirror whole.
        loaded = self.mirror.load(kvs, rev)
        if invalidations == self._invalidations and (loaded or self.mirror.current):
            self._read_at, self._reusable = now, True
        return (self.mirror.snapshot() if loaded else None) or parse_snapshot(self.registry.keys, kvs, rev)

    def _why_not(self) -> str:
        if not self.mirror.current:
            return "its watch is not running"
        return "the session's keep-alives do not land"
