"""The cluster's records in etcd: member records, decided node states, the
switchover request, and one consistent snapshot of them per cycle.

Contract:
- A member record is JSON bound to its node's lease: it vanishes with the
  node's session. Decided states are plain keys written by the leader (and
  by operators for `maintenance`), so they outlive the node.
- `snapshot()` reads leader, members, states and switchover in ONE range
  request, hence at one revision; the events below the same prefix are
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


@dataclass(frozen=True)
class Snapshot:
    revision: int
    leader: LeaderInfo | None
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    member_leases: dict[str, int] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    switchover: Switchover | None = None
    fence_blocked: dict[str, str] = field(default_factory=dict)

    def member_infos(self) -> dict[str, MemberInfo]:
        out = {}
        for name, rec in self.members.items():
            health = rec.get("health", {})
            out[name] = MemberInfo(name, int(rec.get("priority", 100)),
                                   health.get("verdict") == "healthy",
                                   tuple(health.get("reasons", ())), self.member_leases.get(name, 0))
        return out


class Registry:
    def __init__(self, store: Store, keys: Keys):
        self.store, self.keys = store, keys

    async def register(self, node: str, record: dict[str, Any], lease: int) -> None:
        await self.store.put(self.keys.member(node), json.dumps(record, sort_keys=True), lease)

    async def set_state(self, node: str, state: str) -> None:
        await self.store.put(self.keys.state(node), state)

    async def request_switchover(self, to: str, by: str, lease: int) -> None:
        await self.store.put(self.keys.switchover, json.dumps({"to": to, "by": by}), lease)

    async def clear_switchover(self) -> None:
        await self.store.delete(self.keys.switchover)

    async def block_fencing(self, node: str, record: dict[str, Any]) -> None:
        """Fencing `node` failed: no one takes its roles until an operator confirms it is off."""
        await self.store.put(self.keys.fence_marker(node), json.dumps(record, sort_keys=True))

    async def fenced(self, node: str) -> None:
        """`node` is confirmed off: mark it fenced and lift any block."""
        await self.set_state(node, "fenced")
        await self.store.delete(self.keys.fence_marker(node))

    async def snapshot(self) -> Snapshot:
        start = self.keys.prefix + "events" + chr(ord("/") + 1)
        kvs, rev = await self.store.range(start, prefix_end(self.keys.prefix))
        return parse_snapshot(self.keys, kvs, rev)


def parse_snapshot(keys: Keys, kvs: list[KeyValue], revision: int) -> Snapshot:
    leader = None
    members: dict[str, dict[str, Any]] = {}
    leases: dict[str, int] = {}
    states: dict[str, str] = {}
    switchover = None
    blocked: dict[str, str] = {}
    for kv in kvs:
        if kv.key == keys.leader:
            leader = leader_from(kv)
        elif kv.key.startswith(keys.members):
            name = kv.key[len(keys.members):]
            members[name] = _json(kv.value)
            leases[name] = kv.lease
        elif kv.key.startswith(keys.states):
            states[kv.key[len(keys.states):]] = kv.value
        elif kv.key.startswith(keys.fencing):
            blocked[kv.key[len(keys.fencing):]] = str(_json(kv.value).get("reason", "fencing failed"))
        elif kv.key == keys.switchover:
            rec = _json(kv.value)
            if rec.get("to"):
                switchover = Switchover(str(rec["to"]), str(rec.get("by", "")))
    return Snapshot(revision, leader, members, leases, states, switchover, blocked)


def _json(text: str) -> dict[str, Any]:
    # A record someone wrote by hand must not crash every agent's loop.
    try:
        value = json.loads(text)
    except ValueError:
        return {"corrupt": text[:200]}
    return value if isinstance(value, dict) else {"corrupt": text[:200]}
