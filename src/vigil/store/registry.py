"""The cluster's records in etcd: member records, decided node states, the
switchover request, and one consistent snapshot of them per cycle.

Contract:
- A member record is JSON bound to its node's lease: it vanishes with the
  node's session. Decided states are plain keys written by the leader (and
  by operators for `maintenance`), so they outlive the node.
- `snapshot()` reads leader, members, states and switchover in ONE range
  request, hence at one revision. Member records are typed
  (vigil.store.member_record); one that is not what agents write (bad JSON,
  a priority that is not an integer, ...) is left out of `members` and named
  in `bad_records` (key -> the problem): one bad record
  never stops a decision loop or a command; the events below the same prefix are
  outside that range (keys sort: config < events/ < fencing/ < leader <
  members/ < state/ < switchover).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from vigil.core.view import LeaderInfo, MemberInfo, Switchover
from vigil.store.base import KeyValue, Store, prefix_end
from vigil.store.election import leader_from
from vigil.store.keys import Keys
from vigil.store.member_record import BadRecord, MemberRecord, parse_member


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


def parse_snapshot(keys: Keys, kvs: list[KeyValue], revision: int) -> Snapshot:
    leader = None
    members: dict[str, MemberRecord] = {}
    leases: dict[str, int] = {}
    states: dict[str, str] = {}
    switchover = None
    blocked: dict[str, str] = {}
    attempts: dict[str, tuple[str, int]] = {}
    bad: dict[str, str] = {}
    holds: dict[str, dict[str, Any]] = {}
    for kv in kvs:
        if kv.key == keys.leader:
            leader = leader_from(kv)
        elif kv.key.startswith(keys.members):
            name = kv.key[len(keys.members):]
            rec = parse_member(name, kv.value)
            if isinstance(rec, BadRecord):
                bad[kv.key] = rec.problem
                continue
            members[name] = rec
            leases[name] = kv.lease
        elif kv.key.startswith(keys.states):
            states[kv.key[len(keys.states):]] = kv.value
        elif kv.key.startswith(keys.fencing):
            rec, node = _json(kv.value), kv.key[len(keys.fencing):]
            blocked[node] = str(rec.get("reason", "fencing failed"))
            if rec.get("state") == "in_progress":
                attempts[node] = (str(rec.get("by", "")), kv.create_revision)
        elif kv.key.startswith(keys.holds):
            rec = _json(kv.value)
            if isinstance(rec.get("until"), (int, float)):
                holds[kv.key[len(keys.holds):]] = {"until": float(rec["until"]), "why": str(rec.get("why", ""))}
        elif kv.key == keys.switchover:
            rec = _json(kv.value)
            if rec.get("to"):
                switchover = Switchover(str(rec["to"]), str(rec.get("by", "")))
    return Snapshot(revision, leader, members, leases, states, switchover, blocked, attempts, bad, holds)


def _json(text: str) -> dict[str, Any]:
    # A record someone wrote by hand must not crash every agent's loop.
    try:
        value = json.loads(text)
    except ValueError:
        return {"corrupt": text[:200]}
    return value if isinstance(value, dict) else {"corrupt": text[:200]}
