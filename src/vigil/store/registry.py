"""The cluster's records in etcd: member records, decided node states, the
switchover request, and one consistent snapshot of them per cycle.

Contract:
- A member record is JSON bound to its node's lease: it vanishes with the
  node's session. Decided states are plain keys written by the leader (and
  by operators for `maintenance`), so they outlive the node.
- `snapshot()` reads leader, members, states and switchover in ONE range
  request, hence at one revision. A member record that is not what agents
  write (bad JSON, a priority that is not an integer, ...) is left out of
  `members` and named in `bad_records` (key -> the problem): one bad record
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


@dataclass(frozen=True)
class Snapshot:
    revision: int
    leader: LeaderInfo | None
    members: dict[str, dict[str, Any]] = field(default_factory=dict)
    member_leases: dict[str, int] = field(default_factory=dict)
    states: dict[str, str] = field(default_factory=dict)
    switchover: Switchover | None = None
    fence_blocked: dict[str, str] = field(default_factory=dict)
    # node -> (fencer, marker create revision) for fences in flight, not failed ones
    fence_attempts: dict[str, tuple[str, int]] = field(default_factory=dict)
    bad_records: dict[str, str] = field(default_factory=dict)  # key -> what is wrong with it
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # flap damping: node -> {until, why}

    def member_infos(self) -> dict[str, MemberInfo]:
        out = {}
        for name, rec in self.members.items():
            health = rec.get("health", {})
            out[name] = MemberInfo(name, rec.get("priority", 100), may_lead(health),
                                   tuple(health.get("reasons", ())), self.member_leases.get(name, 0),
                                   frozenset(rec.get("suspects") or ()), health.get("verdict", "unknown"))
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
    attempts: dict[str, tuple[str, int]] = {}
    bad: dict[str, str] = {}
    holds: dict[str, dict[str, Any]] = {}
    for kv in kvs:
        if kv.key == keys.leader:
            leader = leader_from(kv)
        elif kv.key.startswith(keys.members):
            name, rec = kv.key[len(keys.members):], _object(kv.value)
            problem = member_problem(rec) if rec is not None else \
                f"not a JSON object: {kv.value[:60]!r}"
            if problem:
                bad[kv.key] = problem
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


def may_lead(health: dict[str, Any]) -> bool:
    """A member record's `health` says its node may lead: `may_lead` since issue 12;
    before it, a verdict of "healthy" said the same."""
    if "may_lead" in health:
        return health["may_lead"] is True
    return health.get("verdict") in ("healthy", "ready")


def member_problem(rec: dict[str, Any]) -> str | None:
    """None for a record as agents write it; else what is wrong, in one line."""
    prio = rec.get("priority", 100)
    if isinstance(prio, bool) or not isinstance(prio, int) or not 0 <= prio <= 1000:
        return f"priority {prio!r} is not an integer from 0 to 1000"
    health = rec.get("health", {})
    if not isinstance(health, dict) or not isinstance(health.get("verdict", ""), str) \
            or not _strings(health.get("reasons", [])) or not isinstance(health.get("may_lead", False), bool):
        return f"health {str(health)[:120]!r} is not {{verdict: str, reasons: [str], may_lead: bool}}"
    if not isinstance(rec.get("fingerprint") or {}, dict):
        return f"fingerprint {str(rec.get('fingerprint'))[:80]!r} is not a mapping"
    if not _strings(rec.get("suspects") or []):
        return f"suspects {rec.get('suspects')!r} is not a list of node names"
    hb = rec.get("heartbeat", {})
    if not isinstance(hb, dict) or not _strings(hb.get("addresses", [])):
        return f"heartbeat {str(hb)[:80]!r} is not {{addresses: [str], port: int}}"
    if not isinstance(rec.get("api_url", ""), str):
        return f"api_url {rec.get('api_url')!r} is not a URL"
    return inference_problem(rec.get("inference"))


def inference_problem(inf: Any) -> str | None:
    """None for a missing or well-formed `inference` block of a member record."""
    if inf is None:
        return None
    if not isinstance(inf, dict) or not isinstance(inf.get("url", ""), str) \
            or not isinstance(inf.get("ready", False), bool):
        return f"inference {str(inf)[:80]!r} is not {{url: str, ready: bool, ...}}"
    return None


def _strings(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json(text: str) -> dict[str, Any]:
    # A record someone wrote by hand must not crash every agent's loop.
    try:
        value = json.loads(text)
    except ValueError:
        return {"corrupt": text[:200]}
    return value if isinstance(value, dict) else {"corrupt": text[:200]}
