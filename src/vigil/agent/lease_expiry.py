"""Revoking a silent owner's lease the moment etcd has expired it
(vigil.core.lease_expiry), instead of up to half a second later at etcd's
lease scan: what a lone survivor, which no majority can back to convict
anyone, does for a batch shard whose owner it suspects (vigil.agent.jobs).
The revoke deletes every key bound to the lease, as etcd's scan would a
moment later; it cannot take a lease that is still being renewed."""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from vigil.clock import Clock
from vigil.core.lease_expiry import ExpiryWatch, Leave, Revoke
from vigil.errors import StoreError
from vigil.store.base import Store
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)

WANTED_EVERY = 1.0  # s: the longest wait between asking whether the lease is still wanted
REST = 10.0  # s a lease found renewed is not watched again (a suspected owner that reaches etcd)


async def revoke_when_expired(store: Store, lease: int, clock: Clock,
                              wanted: Callable[[], bool] = lambda: True) -> str:
    """Read `lease`'s time left until it is gone or provably expired and
    unrenewed, then revoke it. Returns "revoked" (by this call), "gone" (it went
    otherwise: etcd's scan), "left" (it was renewed, or cannot be timed: a lease
    granted for 1 s) or "unwanted" (`wanted()`, asked at least every
    WANTED_EVERY seconds, said no). StoreError propagates: etcd's scan still
    takes the lease."""
    watch = ExpiryWatch()
    while wanted():
        sent = clock.now()
        left, granted = await store.lease_left(lease)
        step = watch.read(sent, clock.now(), left, granted)
        if isinstance(step, Leave):
            return "gone" if step.gone else "left"
        if isinstance(step, Revoke):
            return "revoked" if await store.revoke(lease) else "gone"
        await asyncio.sleep(min(WANTED_EVERY, max(0.0, step.at - clock.now())))
    return "unwanted"


class LeaseReaper:
    """At most one `revoke_when_expired` per lease at a time, in the background;
    none for REST seconds after one found the lease renewed, unless a member is
    suspected afresh (an owner suspected across a split that still reaches etcd
    is not read every POLL all along)."""

    def __init__(self, store: Store, clock: Clock, record: Callable[..., object]):
        self.store, self.clock, self.record = store, clock, record
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._rested: dict[int, float] = {}  # lease -> when it was found renewed

    def reap(self, lease: int, owner: str, what: str, wanted: Callable[[], bool]) -> None:
        """Revoke `owner`'s `lease` at its expiry while `wanted()` (`what`: the
        record waiting for it, for the event)."""
        now = self.clock.now()
        self._rested = {held: at for held, at in self._rested.items() if now - at < REST}
        if lease and lease not in self._tasks and lease not in self._rested:
            task = asyncio.get_running_loop().create_task(self._reap(lease, owner, what, wanted))
            self._tasks[lease] = task
            task.add_done_callback(lambda _: self._tasks.pop(lease, None))

    async def _reap(self, lease: int, owner: str, what: str, wanted: Callable[[], bool]) -> None:
        try:
            outcome = await revoke_when_expired(self.store, lease, self.clock, wanted)
            if outcome == "revoked":
                self.record("lease_expired", f"{owner}'s lease {lease:x} expired unrenewed: revoked at its "
                            f"expiry instead of at etcd's next lease scan, freeing {what}", owner=owner)
            elif outcome == "left":
                self._rested[lease] = self.clock.now()
        except StoreError as e:  # etcd failed, or answered what is not a lease's seconds
            log.info("timing %s's lease expiry: etcd failed (%s); etcd's lease scan takes it", owner, e)

    def suspected_anew(self) -> None:
        """A member was suspected afresh: the leases found renewed may be watched again."""
        self._rested.clear()

    @property
    def watching(self) -> frozenset[int]:
        """The leases being timed now."""
        return frozenset(self._tasks)

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks.values())
