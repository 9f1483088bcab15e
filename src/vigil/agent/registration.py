"""Registration: this node in etcd. One live session (a lease kept alive,
vigil.store.session) at a time, the member record under its lease
(vigil.agent.publisher) and the election bound to it.

Contract: `run()` opens a session and registers the record; when the lease
is lost it tells `on_lost` (the role ends: a leader key bound to the lease is
gone) and opens the next one, retrying with back-off (0.1 s doubling to 2 s)
while etcd refuses. Each acknowledged keep-alive goes to `on_renewed` with
the time it was sent. It is given what it needs as values and callables
(the record as of now, the suspicions it lists) and never reads the Agent;
it is the reconciler's SessionLink (vigil.agent.reconciler).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from vigil.agent.publisher import RecordPublisher
from vigil.agent.status import SessionState
from vigil.clock import Clock
from vigil.core.timing import Timing
from vigil.errors import StoreError
from vigil.store.base import Store
from vigil.store.election import Election
from vigil.store.member_record import MemberRecord
from vigil.store.registry import Registry
from vigil.store.session import Session

log = logging.getLogger(__name__)

Record = Callable[..., object]  # EventLog.record


class Registration:
    def __init__(self, node: str, store: Store, clock: Clock, timing: Timing, registry: Registry, leader_key: str,
                 record: Record, record_of: Callable[[], MemberRecord], suspects: Callable[[], list[str]],
                 on_renewed: Callable[[float], None], on_lost: Callable[[str], None], wake: Callable[[], None]):
        """`record_of`: our member record as of now; `suspects`: the suspicions it lists
        now; `on_lost(reason)`: the lease is gone; `wake`: the decision loop's (a session
        opened or lost)."""
        self.node, self.store, self.clock, self.timing, self.record = node, store, clock, timing, record
        self.leader_key, self.on_renewed, self.on_lost, self.wake = leader_key, on_renewed, on_lost, wake
        self.session: Session | None = None
        self.election: Election | None = None
        self.opened_at: float | None = None  # when the current session was opened
        self.publisher = RecordPublisher(registry, clock, record_of, self.lease, suspects)

    def __repr__(self) -> str:
        return f"<Registration {self.node} {self.session!r}>"

    # -- reading ---------------------------------------------------------------------
    def session_ok(self) -> bool:
        """We hold a lease etcd cannot have expired (vigil.store.session.Session.live)."""
        s = self.session
        return s is not None and s.live()

    def lease(self) -> int | None:
        """Our lease while we hold one etcd cannot have expired, else None."""
        return self.session.lease_id if self.session is not None and self.session_ok() else None

    def state(self) -> SessionState:
        """The session as /status and /metrics show it (vigil.agent.status)."""
        s = self.session
        return SessionState(self.session_ok(), s.lease_id if s else None, s.expires_by() if s else None,
                            s.failures if s else 0)

    def etcd_answers(self, now: float) -> bool:
        """The session's keep-alives land: none failed since the last, and the last
        answered one was sent within two keep-alive intervals. A watch cut off from
        etcd by the network goes silent rather than failing, and a paused process
        wakes with a backlog, so the mirror is trusted only while this holds."""
        s = self.session
        return (s is not None and not s.done.is_set() and s.failures == 0
                and now - s.last_ack_sent < 2 * s.keepalive_interval)

    def suspects_unpublished(self) -> bool:
        """Our suspicions differ from what our record in etcd says (peers read them before they fence)."""
        return self.publisher.unpublished()

    # -- acting ----------------------------------------------------------------------
    def request_publish(self) -> None:
        """Publish our member record soon (a change of state; vigil.agent.publisher)."""
        self.publisher.request()

    def republish(self) -> None:
        """Publish it again in the background, unless under way or backing off after a failed put."""
        self.publisher.retry()

    def renew_now(self) -> None:
        """Send the next keep-alive at once (a fresh deadline for a new holder of the VIPs)."""
        if self.session:
            self.session.renew_now()

    async def close(self) -> None:
        """Revoke the lease: the member record and any leader key bound to it vanish at once."""
        if self.session:
            await self.session.close(revoke=True)

    async def run(self) -> None:
        """Keep one live session; re-register after a lost lease."""
        backoff = 0.1
        while True:
            session = Session(self.store, self.clock, self.timing.lease_ttl, self.timing.keepalive_interval,
                              on_renewed=self.on_renewed)
            try:
                lease = await session.open()
                await self.publisher.register(lease.id)
            except StoreError as e:
                log.warning("cannot open an etcd session yet: %s", e)
                await session.close(revoke=True)
                await asyncio.sleep(backoff)
                backoff = min(2.0, backoff * 2)
                continue
            except BaseException:  # cancelled (a stop) mid-registration: no lease left behind
                await asyncio.shield(session.close(revoke=True))
                raise
            backoff = 0.1
            self.session, self.opened_at = session, self.clock.now()
            self.election = Election(self.store, self.leader_key, session, self.node)
            self.record("session_opened", f"lease {lease.id:x} granted (TTL {lease.ttl} s); member registered",
                        lease=lease.id, ttl=lease.ttl)
            self.wake()
            await session.done.wait()
            self.on_lost(f"etcd session lost: {session.lost_reason}")
            self.record("session_lost", session.lost_reason, lease=session.lease_id)
            self.wake()
