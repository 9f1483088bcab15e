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
- `snapshot()` is the Snapshot at the newest applied revision (parsed once
  per change); it may trail etcd by the watch's delivery delay (ms), never
  by a missed change.
"""

from __future__ import annotations

from vigil.store.base import KeyValue, WatchEvent
from vigil.store.keys import Keys
from vigil.store.registry import ParseCache, Snapshot, parse_snapshot, snapshot_range


class RegistryMirror:
    def __init__(self, keys: Keys):
        self.keys = keys
        self.start, self.end = snapshot_range(keys)
        self.revision = 0
        self._kvs: dict[str, KeyValue] | None = None
        self._gap = False  # a change was applied from a watch that started after `revision`
        self._watch_from: int | None = None
        self._parsed: Snapshot | None = None
        self._records: ParseCache = {}  # parse_snapshot's cache: a change re-parses one record

    @property
    def current(self) -> bool:
        return (self._kvs is not None and self._watch_from is not None and self._watch_from <= self.revision
                and not self._gap)

    def resume_after(self) -> int | None:
        """The revision a new watch streams changes after to keep this mirror whole;
        None when nothing is loaded (start from a fresh read). One before `revision`:
        a lease's expiry or a transaction changes several keys at one revision, and a
        stream cut between them must deliver that revision again."""
        return self.revision - 1 if self._kvs is not None else None

    def forget(self) -> None:
        """The history after `revision` is gone (compacted): load again."""
        self._kvs, self._parsed, self.revision = None, None, 0

    def watching(self, from_revision: int) -> None:
        self._watch_from = from_revision

    def stopped(self) -> None:
        self._watch_from = None

    def load(self, kvs: list[KeyValue], revision: int) -> bool:
        """Take a range read at `revision`; False (nothing changes) when the watch
        already applied a later change than the read holds: loading it would lose that."""
        if self._kvs is not None and self.revision > revision:
            return False
        self._kvs = {kv.key: kv for kv in kvs}
        self.revision, self._gap = revision, False
        self._parsed = None
        self._records = {k: v for k, v in self._records.items() if k in self._kvs}
        return True

    def apply(self, ev: WatchEvent) -> None:
        # `<`, not `<=`: the keys a lease's expiry or a transaction changes share a revision
        # (applying one again is harmless); payload records are in the range, in no decision.
        if self._kvs is None or ev.revision < self.revision or ev.key.startswith(self.keys.payloads):
            return
        if self._watch_from is None or self._watch_from > self.revision:
            self._gap = True  # changes between `revision` and the watch's start went unseen
        self.revision = ev.revision
        self._parsed = None
        if not self.start <= ev.key < self.end:
            return
        if ev.type == "delete":
            self._kvs.pop(ev.key, None)
            self._records.pop(ev.key, None)
        else:
            old = self._kvs.get(ev.key)
            self._kvs[ev.key] = KeyValue(ev.key, ev.value, ev.create_revision or (old.create_revision if old
                                         else ev.revision), ev.revision, lease=ev.lease)

    def snapshot(self) -> Snapshot | None:
        if self._kvs is None:
            return None
        if self._parsed is None:
            self._parsed = parse_snapshot(self.keys, sorted(self._kvs.values(), key=lambda kv: kv.key),
                                          self.revision, self._records)
        return self._parsed

