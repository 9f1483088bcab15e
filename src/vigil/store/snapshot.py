"""Snapshot: what every decision reads from etcd (leader, member records,
decided states, fencing markers, holds, the switchover request) at one
revision, and SnapshotBuilder, which keeps one up to date key by key.

Contract:
- `parse_snapshot(keys, kvs, revision)` is the snapshot of one range read.
  `SnapshotBuilder.put(kv)` / `delete(key)` change one key, and
  `snapshot(revision)` is then exactly what parse_snapshot gives for the
  builder's keys (a property test holds the two equal): a watched mirror
  pays per change, not per member, which is what lets a cluster grow.
- Never raises: each record goes through its family's parser
  (vigil.store.records); a bad one is left out and named in `bad_records`.
  A leader key holding no node name still holds the election (as
  `UNNAMED_LEADER`) until its lease goes. A fencing marker that is not what
  a fencer writes blocks nothing: no fencer of ours wrote it.
- A per-node family has at most one key per node (vigil.store.records.family_of),
  so a key's part of the snapshot is removed exactly when the key changes.
- Every dict iterates in key order, as a range read returns the keys. A
  Snapshot's dicts are its own; the records in them are immutable and shared.
- Cost: a change parses at most one record and moves its key's entries; a
  new snapshot copies the dicts (O(N) in C, once per change, not per cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vigil.core.view import LeaderInfo, MemberInfo, Switchover
from vigil.store.base import KeyValue
from vigil.store.election import leader_from
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.records import BadRecord, Family, Hold, family_of, nested_in, node_of, parse_as

UNNAMED_LEADER = "?"  # the leader key holds no node name: no node is "?" (vigil.fields.NAME_RE)
DECIDED_FAMILIES = ("leader", "members", "state", "fencing", "held", "switchover")


@dataclass(frozen=True)
class Snapshot:
    revision: int
    leader: LeaderInfo | None
    members: dict[str, MemberRecord] = field(default_factory=dict)
    member_leases: dict[str, int] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    switchover: Switchover | None = None
    fence_blocked: dict[str, str] = field(default_factory=dict)
    # node -> (fencer, marker create revision) for fences in flight, not failed ones
    fence_attempts: dict[str, tuple[str, int]] = field(default_factory=dict)
    bad_records: dict[str, str] = field(default_factory=dict)  # key -> what is wrong with it
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # flap damping: node -> {until, why}
    infos: dict[str, MemberInfo] | None = field(default=None, compare=False, repr=False)  # the builder's

    def member_infos(self) -> dict[str, MemberInfo]:
        if self.infos is not None:
            return dict(self.infos)
        return {name: member_info(rec, self.member_leases.get(name, 0)) for name, rec in self.members.items()}


def member_info(rec: MemberRecord, lease: int) -> MemberInfo:
    return MemberInfo(rec.name, rec.priority, rec.may_lead, rec.reasons, lease, frozenset(rec.suspects), rec.verdict)


def parse_snapshot(keys: Keys, kvs: list[KeyValue], revision: int) -> Snapshot:
    """The snapshot of one range read (see the module's contract)."""
    builder = SnapshotBuilder(keys)
    for kv in kvs:
        builder.put(kv)
    return builder.snapshot(revision)


# A key as put: (kv, its family if decided on, its record, the (part, key) slots it fills in the snapshot)
Entry = tuple[KeyValue, "Family | None", Any, list[tuple[str, str]]]
Part = tuple[str, str, Any]  # (part of the snapshot, key in it, value) one etcd key contributes
ONE = ""  # the key in the "leader" and "switchover" parts: one etcd key each


class SnapshotBuilder:
    """The snapshot of a set of keys that changes one key at a time. Each etcd
    key contributes parts (vigil.store.snapshot._parts_of): a member record its
    record, lease and MemberInfo under its node, a bad record its problem under
    its key; a change replaces its key's parts in place."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self._entries: dict[str, Entry] = {}
        self._parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
        self._built: Snapshot | None = None
        self._disordered: set[str] = set()  # parts a new key broke the order of: sorted when built

    def get(self, key: str) -> KeyValue | None:
        """The key as last put, or None."""
        entry = self._entries.get(key)
        return entry[0] if entry else None

    def load(self, kvs: list[KeyValue]) -> None:
        """Hold exactly `kvs`; a record whose value is unchanged is not parsed again."""
        before, self._entries = self._entries, {}
        self._parts = {name: {} for name in _PARTS}
        self._built, self._disordered = None, set()
        for kv in kvs:
            self.put(kv, before.get(kv.key))

    def put(self, kv: KeyValue, known: Entry | None = None) -> None:
        """Set one key (`known`: an earlier entry of it whose parse may be reused)."""
        old = self._entries.get(kv.key)
        known = known or old
        if known is not None and known[0].value == kv.value:
            f, rec = known[1], known[2]  # records are immutable: parsed once per value
        else:
            f, rec = self._parse(kv)
        new = _parts_of(kv, f, rec)
        slots = [(part, key) for part, key, _ in new]
        self._entries[kv.key] = (kv, f, rec, slots)
        if old is not None:
            self._drop([slot for slot in old[3] if slot not in slots])
        for part, key, value in new:
            if not _insert(self._parts[part], key, value):
                self._disordered.add(part)
        self._built = None

    def delete(self, key: str) -> None:
        """Remove one key (nothing if it is not held)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._drop(old[3])
            self._built = None

    def snapshot(self, revision: int) -> Snapshot:
        """The Snapshot of the keys held, as of `revision` (the same object until a change)."""
        if self._built is None or self._built.revision != revision:
            for part in self._disordered:  # once per snapshot, not per new key (a cluster starting)
                self._parts[part] = dict(sorted(self._parts[part].items()))
            self._disordered.clear()
            p = self._parts
            self._built = Snapshot(
                revision, p["leader"].get(ONE), dict(p["members"]), dict(p["member_leases"]), dict(p["states"]),
                p["switchover"].get(ONE), dict(p["fence_blocked"]), dict(p["fence_attempts"]),
                dict(p["bad_records"]), {n: dict(h) for n, h in p["holds"].items()}, infos=dict(p["infos"]))
        return self._built

    def _parse(self, kv: KeyValue) -> tuple[Family | None, Any]:
        f = family_of(self.keys, kv.key)
        if f is None:
            below = nested_in(self.keys, kv.key)
            if below is not None:  # it could speak for the node its last segment names: it speaks for none
                return below, BadRecord(kv.key, f"not a key Vigil writes: {below.name}/ holds one key per node, "
                                                "named by the node alone; delete it")
            return None, None
        return (f, parse_as(f, kv.key, kv.value)) if f.name in DECIDED_FAMILIES else (None, None)

    def _drop(self, slots: list[tuple[str, str]]) -> None:
        for part, key in slots:
            self._parts[part].pop(key, None)


_PARTS = ("leader", "switchover", "members", "member_leases", "infos", "states", "fence_blocked", "fence_attempts",
          "holds", "bad_records")


def _parts_of(kv: KeyValue, f: Family | None, rec: Any) -> list[Part]:
    """What one key contributes to the snapshot: nothing for a key no decision
    reads (payloads, jobs: held only to be removed again)."""
    if f is None:
        return []
    if isinstance(rec, BadRecord):
        bad: list[Part] = [("bad_records", kv.key, rec.problem)]
        if f.name == "leader":  # the key is held all the same: by no node we know of
            bad.append(("leader", ONE, replace(leader_from(kv), name=UNNAMED_LEADER)))
        return bad
    if f.name == "leader":
        return [("leader", ONE, leader_from(kv))]
    if f.name == "switchover":
        return [("switchover", ONE, rec)]
    return _node_parts(f.name, kv, rec)


def _node_parts(family: str, kv: KeyValue, rec: Any) -> list[Part]:
    """(part, node, value) a good record of a per-node family adds to the snapshot."""
    if family == "members":
        return [("members", rec.name, rec), ("member_leases", rec.name, kv.lease),
                ("infos", rec.name, member_info(rec, kv.lease))]
    if family == "state":
        return [("states", node_of(kv.key), rec)]
    if family == "fencing":
        attempt = [("fence_attempts", rec.node, (rec.by, kv.create_revision))] if rec.state == "in_progress" else []
        return [("fence_blocked", rec.node, rec.reason), *attempt]
    assert family == "held"
    hold: Hold = rec
    return [("holds", hold.node, {"until": hold.until, "why": hold.why})]


def _insert(d: dict[str, Any], key: str, value: Any) -> bool:
    """d[key] = value (in place when present); False when that broke d's key
    order (a new key before the last)."""
    in_order = key in d or not d or key > next(reversed(d))
    d[key] = value
    return in_order
