"""This node's drain place in etcd (vigil.store.drain_places), kept in step
with its drain gate (vigil.core.drain_budget.DrainGate).

Contract: `tend()` is called after every judgement of the gate and starts at
most one step at a time, in the background:
- the gate `wants_place`: read the places and, if the gate still fits among
  their holders, take one (a transaction on the epoch); when it is taken the
  gate is granted and `regate()` adopts the drain;
- the gate is granted without a claim under the session's current lease (it
  was already out when it restarted, it drained while etcd was away, or the
  session was replaced mid-drain): write the claim under the current lease;
- the gate is no longer granted (the drain ended) and a claim may exist (one
  was sent, even if its reply was lost): give it back.
A step that fails on a store error is tried again at the next `tend()` (the
next snapshot or health round). If etcd refuses the places (roles made
before they existed), the gate judges on the member records alone, the
node says once how to grant them, and it tries the places again every
`retry_refused` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine

from vigil.clock import Clock
from vigil.core.drain_budget import DrainGate
from vigil.errors import StoreError
from vigil.store.drain_places import DrainPlaces
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)
RETRY_REFUSED = 300.0  # s between tries of places etcd refused


class PlaceKeeper:
    def __init__(self, places: DrainPlaces, gate: DrainGate, lease: Callable[[], int | None], clock: Clock,
                 record: Any, regate: Callable[[], None], retry_refused: float = RETRY_REFUSED):
        self.places, self.gate, self.lease, self.clock = places, gate, lease, clock
        self.record, self.regate, self.retry_refused = record, regate, retry_refused
        self.claim_lease: int | None = None  # the lease of a claim that may exist in etcd
        self._refused_at: float | None = None
        self._told = False
        self._work: asyncio.Task | None = None
        gate.claims = True

    def tend(self) -> None:
        if self._work is not None:
            return
        if self._refused_at is not None:
            if self.clock.now() - self._refused_at < self.retry_refused:
                return
            self._refused_at, self.gate.claims = None, True
        gate, lease = self.gate, self.lease()
        if gate.wants_place and lease is not None:
            step: Coroutine[Any, Any, None] = self._take(lease)
        elif gate.granted and gate.claiming and lease is not None and self.claim_lease != lease:
            step = self._hold(lease)
        elif not gate.granted and self.claim_lease is not None:
            step = self._give_back()
        else:
            return
        self._work = asyncio.get_running_loop().create_task(self._run(step))

    async def idle(self) -> None:
        """Return once no step is in flight (the steps a step's outcome starts too)."""
        while self._work is not None:
            await asyncio.shield(self._work)

    async def stop(self) -> None:
        await cancel_and_wait(self._work)

    async def _take(self, lease: int) -> None:
        holders, epoch = await self.places.read()
        if not self.gate.wants_place or not self.gate.fits(holders):
            return
        before, self.claim_lease = self.claim_lease, lease  # a lost reply may still have taken it
        if await self.places.take(epoch, self.gate.since_wall, lease):
            self.gate.grant()
            self.regate()
        else:
            self.claim_lease = before  # another claim came first: nothing was written

    async def _hold(self, lease: int) -> None:
        self.claim_lease = lease
        await self.places.hold(self.gate.since_wall, lease)

    async def _give_back(self) -> None:
        await self.places.give_back()
        self.claim_lease = None

    async def _run(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            await step
        except StoreError as e:
            if "permission denied" in str(e):
                self._refused(e)
            else:
                log.info("drain place: %s (tried again on the next snapshot)", e)
        finally:
            self._work = None

    def _refused(self, e: StoreError) -> None:
        """etcd's roles predate the places: judge on the records alone rather than never drain."""
        self._refused_at, self.gate.claims, self.claim_lease = self.clock.now(), False, None
        if not self._told:
            self._told = True
            self.record("drain_places_refused", f"etcd refused this node's drain place ({e}): the drain budget "
                        "is judged on the member records alone, tried again every "
                        f"{self.retry_refused:g} s; grant drain/<node> and drain-epoch with `vigil etcd-auth "
                        "apply --users admin/etcd-users.yaml` (where `vigil init` ran)")
        self.regate()
