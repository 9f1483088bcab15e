"""A session is live only while etcd cannot have expired its lease: an
unreachable etcd never answers "lease not found", so without this the agent
would report a session (vigil_session_ok 1, VigilEtcdUnreachable silent) for
as long as etcd stays away (found against a real Prometheus with every etcd
member frozen)."""

from __future__ import annotations

import asyncio

from vigil.store.session import Session
from vigil.testing import FakeClock, MemoryStore


async def test_a_session_whose_renewals_stopped_landing_is_not_live_past_its_ttl():
    clock = FakeClock()
    store = MemoryStore(clock)
    s = Session(store, clock, ttl=2, keepalive_interval=0.05, retry_interval=0.05)
    await s.open()
    try:
        assert s.live()
        store.available = False  # every call fails, as with every member frozen
        clock.advance(1.9)
        assert s.live(), "within the TTL etcd still holds the lease"
        clock.advance(0.2)
        assert not s.live() and not s.done.is_set(), "past it: no longer held, though nobody said so"
        store.available = True  # back: etcd says whether the lease outlived the outage
        await asyncio.wait_for(s.done.wait(), 5)
        assert not s.live() and "expired" in s.lost_reason
    finally:
        await s.close(revoke=False)
