"""RegistryMirror: the registry's keys as the watch tells them, so a decision
needs no range read of its own (Kubernetes' informer cache, for one prefix).

Contract:
- `load(kvs, revision)` takes one range read (the snapshot range of
  vigil.store.registry), and refuses (False) one older than a change already
  applied; `apply(event)` each watched change after it, in revision order.
  Every key of one revision is applied (a lease's expiry or a transaction
  changes several at one revision); applying one twice is harmless.
- `watching(from_revision)` is called when a watch starts streaming every
  change after `from_revision`, `stopped()` when it ends. The mirror is
  `current` only while a watch runs that started at or before the newest
  revision applied, and no change came from a watch that started later:
  then no change can have been missed. A watch that broke resumes after the
  revision before the mirror's (`resume_after`: a stream cut inside a
  revision delivers it whole again), so the mirror is current again without
  a range read, unless that history was compacted (`forget`: the next
  snapshot needs one).
- `snapshot()` is the Snapshot at the newest applied revision, kept up to
  date per change (vigil.store.snapshot.SnapshotBuilder: applying a change
  costs the same at 3 members as at 1,000; the first snapshot after it copies
  the dicts); it may trail etcd by the watch's delivery delay (ms), never by
  a missed change.
"""

from __future__ import annotations

from vigil.store.base import KeyValue, WatchEvent
from vigil.store.keys import Keys
from vigil.store.registry import snapshot_range
from vigil.store.snapshot import Snapshot, SnapshotBuilder


class RegistryMirror:
    def __init__(self, keys: Keys):
        self.keys = keys
        self.start, self.end = snapshot_range(keys)
        self.revision = 0
        self._loaded = False
        self._builder = SnapshotBuilder(keys)
        self._gap = False  # a change was applied from a watch that started after `revision`
        self._watch_from: int | None = None

    @property
    def current(self) -> bool:
        return (self._loaded and self._watch_from is not None and self._watch_from <= self.revision
                and not self._gap)

    @property
    def watch_start(self) -> int | None:
        """The revision the running watch streams changes after; None when none runs."""
        return self._watch_from

    def resume_after(self) -> int | None:
        """The revision a new watch streams changes after to keep this mirror whole;
        None when nothing is loaded (start from a fresh read). One before `revision`:
        a lease's expiry or a transaction changes several keys at one revision, and a
        stream cut between them must deliver that revision again."""
        return self.revision - 1 if self._loaded else None

    def forget(self) -> None:
        """The history after `revision` is gone (compacted): load again."""
        self._loaded, self.revision = False, 0

    def watching(self, from_revision: int) -> None:
        self._watch_from = from_revision

    def stopped(self) -> None:
        self._watch_from = None

    def load(self, kvs: list[KeyValue], revision: int) -> bool:
        """Take a range read at `revision`; False (nothing changes) when the watch
        already applied a later change than the read holds: loading it would lose that."""
        if self._loaded and self.revision > revision:
            return False
        self._builder.load(kvs)
        self._loaded, self.revision, self._gap = True, revision, False
        return True

    def apply(self, ev: WatchEvent) -> None:
        # `<`, not `<=`: the keys a lease's expiry or a transaction changes share a revision
        # (applying one again is harmless); payload records are in the range, in no decision.
        if not self._loaded or ev.revision < self.revision or ev.key.startswith(self.keys.payloads):
            return
        if self._watch_from is None or self._watch_from > self.revision:
            self._gap = True  # changes between `revision` and the watch's start went unseen
        self.revision = ev.revision
        if not self.start <= ev.key < self.end:
            return
        if ev.type == "delete":
            self._builder.delete(ev.key)
        else:
            old = self._builder.get(ev.key)
            self._builder.put(KeyValue(ev.key, ev.value, ev.create_revision or (old.create_revision if old
                                       else ev.revision), ev.revision, lease=ev.lease))

    def snapshot(self) -> Snapshot | None:
        return self._builder.snapshot(self.revision) if self._loaded else None

