"""Election: one leader key bound to the winner's lease (etcd's
concurrency.Election, single-key form).

Contract:
- The leader key holds the leader's node name and is bound to its session's
  lease, so it disappears when that lease expires or is revoked.
- The key's create revision is the **fencing token**: every successful
  campaign creates the key anew, so tokens strictly increase over time.
- `try_campaign` is one atomic compare-and-create. If the request's outcome
  is unknown (StoreUnavailable) it re-reads the key and reports leadership
  only if the key holds our name under our lease.
- `resign` deletes the key only if it is still the incarnation we created.
- `remove_invalid` deletes a key that names no leader (a lease-less or
  foreign one, vigil.core.view.ClusterView.leader_key_problem) only while it
  is still exactly the key judged: same create and mod revision.
"""

from __future__ import annotations

from typing import AsyncIterator

from vigil.core.view import LeaderInfo
from vigil.errors import StoreUnavailable
from vigil.store.base import Expect, KeyValue, Store
from vigil.store.session import Session


def leader_from(kv: KeyValue | None) -> LeaderInfo | None:
    return LeaderInfo(kv.value, kv.create_revision, kv.lease, kv.mod_revision) if kv else None


async def remove_invalid(store: Store, key: str, judged: LeaderInfo) -> bool:
    """Delete the leader key `judged` as invalid, only if it has not changed
    since (a real campaign, or a rewrite, is never removed on an old verdict).
    True when it was removed by this call."""
    ok, _ = await store.txn([Expect(key, create_revision=judged.token, mod_revision=judged.mod_revision or None)],
                            [], [key])
    return ok


class Election:
    def __init__(self, store: Store, key: str, session: Session, name: str):
        self.store, self.key, self.session, self.name = store, key, session, name

    def __repr__(self) -> str:
        return f"<Election {self.key} as {self.name}>"

    async def try_campaign(self) -> int | None:
        """Become leader now if nobody is; returns the fencing token or None."""
        lease = self.session.lease_id
        try:
            created, kv = await self.store.create(self.key, self.name, lease)
        except StoreUnavailable:
            kv = await self.store.get(self.key)  # may raise again: then we know nothing
            created = False
        # A key holding our name under our lease is ours even if the reply that said so
        # was lost and a retry found it "already there".
        mine = kv is not None and kv.value == self.name and kv.lease == lease
        return kv.create_revision if (created or mine) and kv else None

    async def campaign(self) -> int:
        """Block until this node is leader; returns the fencing token."""
        while True:
            token = await self.try_campaign()
            if token:
                return token
            kvs, rev = await self.store.range(self.key, self.key + "\0")
            if not kvs:
                continue
            async for ev in self.store.watch(self.key, rev + 1):
                if ev.key == self.key and ev.type == "delete":
                    break

    async def resign(self, token: int) -> bool:
        """Give up leadership held under `token`; True if our key was removed."""
        return await self.store.delete_if_created(self.key, token)

    async def leader(self) -> LeaderInfo | None:
        return leader_from(await self.store.get(self.key))

    async def observe(self) -> AsyncIterator[LeaderInfo | None]:
        """The current leader, then every change of it (None while there is none)."""
        kvs, rev = await self.store.range(self.key, self.key + "\0")  # exactly this key, atomically
        yield leader_from(kvs[0] if kvs else None)
        async for ev in self.store.watch(self.key, rev + 1):
            if ev.key != self.key:
                continue
            if ev.type == "delete":
                yield None
            else:
                yield LeaderInfo(ev.value, ev.create_revision, ev.lease, ev.revision)
