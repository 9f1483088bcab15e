"""The drain budget's places in etcd: a node takes one with a transaction, so
that the budget holds however differently the agents read the cluster.

The member records tell each agent who is out and who waits
(vigil.core.drain_budget), but two agents that read them at different
moments (one has not yet seen the other's record) could each take the last
place. A place is therefore also a key, `drain/<node>`, bound to the node's
session lease, and every claim moves `drain-epoch` in the same transaction
on condition that it has not moved since the claimant read the places: of
two claims made on one reading, one succeeds and the other reads again and
finds the place gone (the etcd semaphore recipe; Kubernetes' disruption
budgets check an eviction against the budget's resourceVersion the same way).

Contract:
- `read()` returns the holders (node -> DrainClaim) and the epoch's mod
  revision (0: never moved), both from one range read at one revision. A
  claim that does not parse holds nothing (it is logged); only its own node
  may write it (vigil.store.etcd_auth).
- `take(revision, since, lease)` claims this node's place if the epoch is
  still at `revision`: True when taken, False when another claim came
  first. The claim lives as long as the lease: a node that dies frees its
  place within the lease TTL.
- `hold(since, lease)` (re)writes this node's claim whatever the places
  hold: for a node already out without one (it restarted mid-drain, or it
  drained while etcd was away) and for a claim to move to a new lease.
- `give_back()` deletes this node's claim (a drain ended); idempotent. Every
  write moves the epoch, the give-back too, so a claim whose reply was lost
  and which etcd applies late (StoreUnavailable: it may or may not apply)
  fails its condition instead of landing after the give-back and holding a
  place for the rest of the node's life.
- Store errors (StoreError) reach the caller, which tries again later.
"""

from __future__ import annotations

import json
import logging

from vigil.store.base import Expect, Store, prefix_end
from vigil.store.keys import Keys
from vigil.store.records import DrainClaim, parse_record

log = logging.getLogger(__name__)


class DrainPlaces:
    def __init__(self, store: Store, keys: Keys, me: str):
        self.store, self.keys, self.me = store, keys, me

    async def read(self) -> tuple[dict[str, DrainClaim], int]:
        kvs, _ = await self.store.range(self.keys.drain_epoch, prefix_end(self.keys.drain_claims))
        holders: dict[str, DrainClaim] = {}
        epoch = 0
        for kv in kvs:
            if kv.key == self.keys.drain_epoch:
                epoch = kv.mod_revision
            else:
                claim = parse_record(self.keys, kv.key, kv.value)  # none for a key below drain/<node>
                if isinstance(claim, DrainClaim):
                    holders[claim.node] = claim
                else:
                    log.warning("a drain place that holds nothing: %s: %s", kv.key, getattr(claim, "problem", ""))
        return holders, epoch

    async def take(self, revision: int, since: float, lease: int) -> bool:
        epoch = (Expect(self.keys.drain_epoch, mod_revision=revision) if revision
                 else Expect(self.keys.drain_epoch, create_revision=0))
        taken, _ = await self.store.txn([epoch], [self._claim(since, lease), self._epoch()])
        return taken

    async def hold(self, since: float, lease: int) -> None:
        await self.store.txn([], [self._claim(since, lease), self._epoch()])

    async def give_back(self) -> None:
        await self.store.txn([], [self._epoch()], [self.keys.drain_claim(self.me)])

    def _claim(self, since: float, lease: int) -> tuple[str, str, int]:
        return self.keys.drain_claim(self.me), json.dumps({"since": since}), lease

    def _epoch(self) -> tuple[str, str, int]:
        return self.keys.drain_epoch, json.dumps({"by": self.me}), 0
