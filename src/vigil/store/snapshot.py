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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from vigil.core.view import LeaderInfo, MemberInfo, Switchover
from vigil.store.base import KeyValue
from vigil.store.election import leader_from
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.records import BadRecord, Family, Hold, family_of, node_of, parse_as

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


Entry = tuple[KeyValue, "Family | None", Any]  # a key as put: (kv, its family if decided on, its record)


class SnapshotBuilder:
    """The snapshot of a set of keys that changes one key at a time."""

    def __init__(self, keys: Keys):
        self.keys = keys
        self._entries: dict[str, Entry] = {}
        self._parts: dict[str, dict[str, Any]] = {name: {} for name in _PARTS}
        self._leader: LeaderInfo | None = None
        self._switchover: Switchover | None = None
        self._built: Snapshot | None = None
        self._disordered: set[str] = set()  # parts a new key broke the order of: sorted when built

    def get(self, key: str) -> KeyValue | None:
        entry = self._entries.get(key)
        return entry[0] if entry else None

    def load(self, kvs: list[KeyValue]) -> None:
        """Hold exactly `kvs`; a record whose value is unchanged is not parsed again."""
        before, self._entries = self._entries, {}
        self._parts = {name: {} for name in _PARTS}
        self._leader = self._switchover = None
        self._built = None
        self._disordered = set()
        for kv in kvs:
            self.put(kv, before.get(kv.key))

    def put(self, kv: KeyValue, known: Entry | None = None) -> None:
        old = self._entries.get(kv.key)
        known = known or old
        if known is not None and known[0].value == kv.value:
            f, rec = known[1], known[2]  # records are immutable: parsed once per value
        else:
            f = family_of(self.keys, kv.key)
            f, rec = (f, parse_as(f, kv.key, kv.value)) if f is not None and f.name in DECIDED_FAMILIES else (None, None)
        if old is not None:
            self._take_out(old)
        self._entries[kv.key] = (kv, f, rec)
        self._put_in(kv, f, rec)

    def delete(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._take_out(old)

    def snapshot(self, revision: int) -> Snapshot:
        if self._built is None or self._built.revision != revision:
            for part in self._disordered:  # once per snapshot, not per new key (a cluster starting)
                self._parts[part] = _ordered(self._parts[part])
            self._disordered.clear()
            p = self._parts
            self._built = Snapshot(
                revision, self._leader, dict(p["members"]), dict(p["member_leases"]), dict(p["states"]),
                self._switchover, dict(p["fence_blocked"]), dict(p["fence_attempts"]), dict(p["bad_records"]),
                dict(p["holds"]), infos=dict(p["infos"]))
        return self._built

    def _put_in(self, kv: KeyValue, f: Family | None, rec: Any) -> None:
        self._built = None
        if f is None:
            return  # a key no decision reads (payloads, jobs): kept only to be removed again
        if isinstance(rec, BadRecord):
            self._insert("bad_records", kv.key, rec.problem)
            if f.name == "leader":  # the key is held all the same: by no node we know of
                self._leader = replace(leader_from(kv), name=UNNAMED_LEADER)
        elif f.name == "leader":
            self._leader = leader_from(kv)
        elif f.name == "switchover":
            self._switchover = rec
        else:
            for part, node, value in _node_parts(f.name, kv, rec):
                self._insert(part, node, value)

    def _insert(self, part: str, key: str, value: Any) -> None:
        if not _insert(self._parts[part], key, value):
            self._disordered.add(part)

    def _take_out(self, entry: Entry) -> None:
        kv, f, rec = entry
        self._built = None
        if f is None:
            return
        if isinstance(rec, BadRecord):
            self._parts["bad_records"].pop(kv.key, None)
        if f.name == "leader":
            self._leader = None
        elif f.name == "switchover":
            self._switchover = None
        elif not isinstance(rec, BadRecord):
            for part, node, _ in _node_parts(f.name, kv, rec):
                self._parts[part].pop(node, None)


_PARTS = ("members", "member_leases", "infos", "states", "fence_blocked", "fence_attempts", "holds", "bad_records")


def _node_parts(family: str, kv: KeyValue, rec: Any) -> list[tuple[str, str, Any]]:
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
    """d[key] = value; False when that broke d's key order (a new key before the last)."""
    in_order = key in d or not d or key > next(reversed(d))
    d[key] = value
    return in_order


def _ordered(d: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(d.items()))
