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
from typing import Any

from vigil.store.base import KeyValue, Store, prefix_end
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.snapshot import UNNAMED_LEADER, Snapshot, parse_snapshot

__all__ = ["Registry", "Snapshot", "parse_snapshot", "snapshot_range", "UNNAMED_LEADER"]

class Registry:
    def __init__(self, store: Store, keys: Keys):
        self.store, self.keys = store, keys

    async def register(self, record: MemberRecord, lease: int) -> None:
        await self.store.put(self.keys.member(record.name), record.to_json(), lease)

    async def set_state(self, node: str, state: str) -> int:
        """Returns the write's revision (as every put here)."""
        return await self.store.put(self.keys.state(node), state)

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

    async def hold(self, node: str, until: float, why: str) -> int:
        """Flap damping holds `node` out until the Unix time `until` (or a release)."""
        return await self.store.put(self.keys.hold(node), json.dumps({"until": until, "why": why}))

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
