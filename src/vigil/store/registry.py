"""The cluster's records in etcd: member records, decided node states, the
switchover request, and one consistent snapshot of them per cycle.

Contract:
- A member record is JSON bound to its node's lease: it vanishes with the
  node's session. Decided states are plain keys written by the leader (and
  by operators for `maintenance`), so they outlive the node.
- `snapshot()` reads leader, members, states and switchover in ONE range
  request, hence at one revision. Every record goes through its key
  family's total parser (vigil.store.records); one that is not what Vigil
  writes (bad JSON, a priority that is not an integer, a number no float
  holds, a state that is not a state, ...) is left out and named in
  `bad_records` (key -> the problem): one bad record never stops a decision
  loop or a command. A leader key holding no node name still holds the
  election (as `UNNAMED_LEADER`) until its lease goes; the events below the same prefix are
  outside that range (keys sort: config < events/ < fencing/ < leader <
  members/ < state/ < switchover).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from vigil.core.view import LeaderInfo, MemberInfo, Switchover
from vigil.store.base import KeyValue, Store, prefix_end
from vigil.store.election import leader_from
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.records import BadRecord, FenceMarker, Hold, family_of, node_of, parse_as

UNNAMED_LEADER = "?"  # the leader key holds no node name: no node is "?" (vigil.fields.NAME_RE)


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

    def member_infos(self) -> dict[str, MemberInfo]:
        return {name: MemberInfo(name, rec.priority, rec.may_lead, rec.reasons, self.member_leases.get(name, 0),
                                 frozenset(rec.suspects), rec.verdict)
                for name, rec in self.members.items()}


class Registry:
    def __init__(self, store: Store, keys: Keys):
        self.store, self.keys = store, keys

    async def register(self, record: MemberRecord, lease: int) -> None:
        await self.store.put(self.keys.member(record.name), record.to_json(), lease)

    async def set_state(self, node: str, state: str) -> None:
        await self.store.put(self.keys.state(node), state)

    async def request_switchover(self, to: str, by: str, lease: int) -> None:
        await self.store.put(self.keys.switchover, json.dumps({"to": to, "by": by}), lease)

    async def clear_switchover(self) -> None:
        await self.store.delete(self.keys.switchover)

    async def block_fencing(self, node: str, record: dict[str, Any], lease: int = 0) -> None:
        """No one takes `node`'s roles while this marker stands. A fence in flight
        writes it with `"state": "in_progress"` under the fencer's lease (it goes
        with the fencer); a failed fence writes `"state": "failed"` with no lease:
        it stands until an operator confirms the node is off."""
        await self.store.put(self.keys.fence_marker(node), json.dumps(record, sort_keys=True), lease)

    async def abandon_fencing(self, node: str, create_revision: int) -> bool:
        """Remove an in-progress marker of a fence no longer in flight, if it is still that one."""
        return await self.store.delete_if_created(self.keys.fence_marker(node), create_revision)

    async def hold(self, node: str, until: float, why: str) -> None:
        """Flap damping holds `node` out until the Unix time `until` (or a release)."""
        await self.store.put(self.keys.hold(node), json.dumps({"until": until, "why": why}))

    async def release_hold(self, node: str) -> None:
        await self.store.delete(self.keys.hold(node))

    async def fenced(self, node: str) -> None:
        """`node` is confirmed off: mark it fenced and lift any block."""
        await self.set_state(node, "fenced")
        await self.store.delete(self.keys.fence_marker(node))

    async def snapshot(self) -> Snapshot:
        return parse_snapshot(self.keys, *await self.read())

    async def read(self) -> tuple[list[KeyValue], int]:
        """The snapshot range's keys and the revision they were read at (one range request)."""
        return await self.store.range(*snapshot_range(self.keys))


def snapshot_range(keys: Keys) -> tuple[str, str]:
    """[start, end) of the keys a snapshot holds: everything under the prefix after events/."""
    return keys.prefix + "events" + chr(ord("/") + 1), prefix_end(keys.prefix)


def parse_snapshot(keys: Keys, kvs: list[KeyValue], revision: int,
                   parsed: ParseCache | None = None) -> Snapshot:
    """The snapshot of one range read. Never raises: each record goes through its
    family's parser (vigil.store.records); a bad one is left out and named in
    `bad_records`. A fencing marker that is not what a fencer writes blocks
    nothing: no fencer of ours wrote it. `parsed`: key -> (value, family,
    record) of earlier calls, used where the value is the same and updated (a
    mirror's snapshot after one change parses one record, not all of them; the
    records are immutable)."""
    snap = Snapshot(revision, None)
    for kv in kvs:
        f, rec = _parse(keys, kv, parsed)
        if f is None:
            continue  # payload records share the range; no decision reads them
        if isinstance(rec, BadRecord):
            snap.bad_records[kv.key] = rec.problem
            if f.name == "leader":  # the key is held all the same: by no node we know of
                snap = replace(snap, leader=replace(leader_from(kv), name=UNNAMED_LEADER))
            continue
        _SNAPSHOT_FAMILIES[f.name](snap, kv, rec)
        if f.name == "leader":
            snap = replace(snap, leader=leader_from(kv))
        elif f.name == "switchover":
            snap = replace(snap, switchover=rec)
    return snap


ParseCache = dict[str, tuple[str, Any, Any]]


def _parse(keys: Keys, kv: KeyValue, parsed: ParseCache | None) -> tuple[Any, Any]:
    """(family, record) of one snapshot key; (None, None) for a key no decision reads."""
    hit = parsed.get(kv.key) if parsed is not None else None
    if hit is not None and hit[0] == kv.value:
        return hit[1], hit[2]
    f = family_of(keys, kv.key)
    out = (f, parse_as(f, kv.key, kv.value)) if f is not None and f.name in _SNAPSHOT_FAMILIES else (None, None)
    if parsed is not None:
        parsed[kv.key] = (kv.value, *out)
    return out


def _member(snap: Snapshot, kv: KeyValue, rec: MemberRecord) -> None:
    snap.members[rec.name] = rec
    snap.member_leases[rec.name] = kv.lease


def _fencing(snap: Snapshot, kv: KeyValue, rec: FenceMarker) -> None:
    snap.fence_blocked[rec.node] = rec.reason
    if rec.state == "in_progress":
        snap.fence_attempts[rec.node] = (rec.by, kv.create_revision)


def _hold(snap: Snapshot, kv: KeyValue, rec: Hold) -> None:
    snap.holds[rec.node] = {"until": rec.until, "why": rec.why}


def _state(snap: Snapshot, kv: KeyValue, rec: str) -> None:
    snap.states[node_of(kv.key)] = rec


def _none(snap: Snapshot, kv: KeyValue, rec: Any) -> None:
    pass  # set by parse_snapshot itself (a frozen field)


_SNAPSHOT_FAMILIES: dict[str, Callable[[Snapshot, KeyValue, Any], None]] = {
    "leader": _none, "members": _member, "state": _state, "fencing": _fencing, "held": _hold, "switchover": _none}
