"""Session: a lease kept alive for the session's lifetime (etcd's
concurrency.Session).

Contract:
- After `open()`, `lease` is granted and a task renews it every
  `keepalive_interval`; after a failed renewal it retries every
  `retry_interval` (a renewal lost to an etcd leader change must not cost a
  whole interval).
- `last_ack_sent` is the monotonic time at which the last renewal that etcd
  acknowledged was *sent* (the grant counts). etcd restarted the TTL no
  earlier than that instant; the leader role derives its deadline from it.
- `renew_now()` sends the next renewal at once instead of at the end of the
  interval (a new holder of a resource that needs a fresh deadline).
- `done` is set when the lease is known to be gone (etcd said LeaseNotFound)
  or the session was closed. It is not set merely because etcd is
  unreachable: the role's own deadline covers that case.
- `close()` revokes the lease (best effort), which deletes every key bound to
  it at once: that is how a graceful stop hands over without waiting a TTL.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from vigil.clock import Clock, woken
from vigil.errors import LeaseNotFound, StoreError
from vigil.store.base import Lease, Store
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Session:
    def __init__(self, store: Store, clock: Clock, ttl: int, keepalive_interval: float,
                 retry_interval: float = 0.1, on_renewed: Callable[[float], None] | None = None):
        self.store, self.clock, self.ttl = store, clock, ttl
        self.keepalive_interval, self.retry_interval = keepalive_interval, retry_interval
        self.on_renewed = on_renewed
        self.lease: Lease | None = None
        self.last_ack_sent = 0.0
        self.failures = 0
        self.done = asyncio.Event()
        self.lost_reason = ""
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        lid = f"{self.lease.id:x}" if self.lease else "-"
        return f"<Session lease={lid} done={self.done.is_set()} failures={self.failures}>"

    @property
    def lease_id(self) -> int:
        return self.lease.id if self.lease else 0

    async def open(self) -> Lease:
        """Grant the lease and start renewing it. Raises StoreError."""
        sent = self.clock.now()
        self.lease = await self.store.grant(self.ttl)
        self.last_ack_sent = sent
        self._task = asyncio.get_running_loop().create_task(self._keepalive_loop())
        return self.lease

    def renew_now(self) -> None:
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        await woken(self._wake, seconds)
        self._wake.clear()

    def live(self) -> bool:
        """Not lost, and a renewal landed within the TTL, so etcd cannot have expired
        the lease yet. An unreachable etcd never says the lease is gone (`done` stays
        unset until it answers again), so this, not `done`, is whether we hold one."""
        return not self.done.is_set() and self.clock.now() < self.expires_by()

    def expires_by(self) -> float:
        """Monotonic instant by which etcd may expire the lease if no renewal lands."""
        return self.last_ack_sent + (self.lease.ttl if self.lease else 0)

    async def close(self, revoke: bool = True) -> None:
        await cancel_and_wait(self._task)
        if revoke and self.lease and not self.done.is_set():
            try:
                await self.store.revoke(self.lease.id)
            except StoreError as e:
                log.warning("could not revoke lease %x on close: %s", self.lease.id, e)
        self._lose("session closed")

    async def _keepalive_loop(self) -> None:
        assert self.lease is not None
        while True:
            await self._pause(self.retry_interval if self.failures else self.keepalive_interval)
            sent = self.clock.now()
            try:
                await self.store.keepalive(self.lease.id)
            except LeaseNotFound:
                self._lose(f"lease {self.lease.id:x} expired or was revoked")
                return
            except StoreError as e:
                self.failures += 1
                log.warning("keep-alive of lease %x failed (%d in a row): %s",
                            self.lease.id, self.failures, e)
                continue
            self.failures = 0
            self.last_ack_sent = max(self.last_ack_sent, sent)
            if self.on_renewed:
                self.on_renewed(sent)

    def _lose(self, reason: str) -> None:
        if not self.done.is_set():
            self.lost_reason = reason
            self.done.set()
