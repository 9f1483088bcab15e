"""ONE conformance suite for the Store port, run against a real 3-member etcd
and the in-memory fake, so the fake cannot drift from the real thing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import uuid

import pytest

from vigil.clock import SystemClock
from vigil.errors import LeaseNotFound, StoreUnavailable
from vigil.store.base import Expect
from vigil.store.election import Election
from vigil.store.etcd import EtcdStore
from vigil.store.session import Session
from vigil.testing import MemoryStore

_n = itertools.count()


@pytest.fixture(params=["memory", "etcd"])
async def store(request):
    if request.param == "memory":
        s = MemoryStore(SystemClock())
        s.start()
    else:
        s = EtcdStore(request.getfixturevalue("etcd_cluster").endpoints, timeout=2.0)
    yield s
    await s.close()


@pytest.fixture
def prefix():
    return f"/conf/{uuid.uuid4().hex[:8]}/"


async def next_event(it, timeout=5.0):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def test_put_get_range_delete(store, prefix):
    r1 = await store.put(prefix + "a", "1")
    r2 = await store.put(prefix + "b", "2")
    assert r2 == r1 + 1
    kv = await store.get(prefix + "a")
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == ("1", r1, r1, 1)
    await store.put(prefix + "a", "3")
    kv = await store.get(prefix + "a")
    assert kv.value == "3" and kv.create_revision == r1 and kv.version == 2
    kvs, rev = await store.range(prefix)
    assert [k.key for k in kvs] == [prefix + "a", prefix + "b"] and rev >= r2 + 1
    kvs, _ = await store.range(prefix + "a", prefix + "b")
    assert [k.key for k in kvs] == [prefix + "a"]
    assert await store.delete(prefix + "a") is True
    assert await store.delete(prefix + "a") is False
    assert await store.get(prefix + "a") is None


async def test_create_is_compare_and_create(store, prefix):
    ok, kv = await store.create(prefix + "leader", "a")
    assert ok and kv.value == "a"
    ok2, kv2 = await store.create(prefix + "leader", "b")
    assert not ok2 and kv2.value == "a" and kv2.create_revision == kv.create_revision


async def test_delete_if_created_only_removes_that_incarnation(store, prefix):
    _, first = await store.create(prefix + "k", "a")
    await store.delete(prefix + "k")
    _, second = await store.create(prefix + "k", "b")
    assert second.create_revision > first.create_revision
    assert await store.delete_if_created(prefix + "k", first.create_revision) is False
    assert (await store.get(prefix + "k")).value == "b"
    assert await store.delete_if_created(prefix + "k", second.create_revision) is True


async def test_txn_applies_all_or_nothing_at_one_revision(store, prefix):
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    ok, rev = await store.txn([Expect(a, create_revision=0)], [(a, "1", 0), (b, "2", 0)])
    assert ok
    ka, kb = await store.get(a), await store.get(b)
    assert ka.mod_revision == kb.mod_revision == rev, "one revision for the whole transaction"
    ok, rev2 = await store.txn([Expect(a, create_revision=0)], [(c, "x", 0)])
    assert not ok and rev2 == rev and await store.get(c) is None, "a failed compare writes nothing"
    ok, rev3 = await store.txn([Expect(a, create_revision=ka.create_revision, mod_revision=rev)],
                               [(a, "3", 0)], [b])
    assert ok and rev3 == rev + 1
    assert (await store.get(a)).value == "3" and await store.get(b) is None
    ok, _ = await store.txn([Expect(a, mod_revision=rev)], [(c, "x", 0)])
    assert not ok, "a stale mod revision fails the compare"
    lease = await store.grant(5)
    ok, _ = await store.txn([], [(c, "y", lease.id)])
    assert ok and (await store.get(c)).lease == lease.id
    await store.revoke(lease.id)
    with pytest.raises(LeaseNotFound):
        await store.txn([], [(c, "z", lease.id)])
    assert await store.get(c) is None


async def test_delete_prefix_removes_only_that_prefix(store, prefix):
    for k in ("j/1/a", "j/1/b", "j/10/a", "j/2/a"):
        await store.put(prefix + k, "v")
    assert await store.delete_prefix(prefix + "j/1/") == 2
    assert [kv.key[len(prefix):] for kv in (await store.range(prefix))[0]] == ["j/10/a", "j/2/a"]
    assert await store.delete_prefix(prefix + "j/1/") == 0


async def test_lease_binds_keys_and_revoke_deletes_them(store, prefix):
    lease = await store.grant(5)
    assert lease.ttl >= 5
    await store.put(prefix + "m", "x", lease.id)
    assert (await store.get(prefix + "m")).lease == lease.id
    assert 0 < await store.time_to_live(lease.id) <= 5
    assert (await store.lease_left(lease.id))[1] == lease.ttl
    assert await store.keepalive(lease.id) >= 5
    assert await store.revoke(lease.id) is True
    assert await store.get(prefix + "m") is None
    assert await store.time_to_live(lease.id) == -1
    assert await store.lease_left(lease.id) == (-1, 0)
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease.id)
    assert await store.revoke(lease.id) is False  # revoking twice is not an error: it says so


async def test_put_with_unknown_lease_is_refused(store, prefix):
    with pytest.raises(LeaseNotFound):
        await store.put(prefix + "x", "y", 0x7777777)


async def test_lease_expires_without_keepalive(store, prefix):
    lease = await store.grant(1)
    _, rev = await store.range(prefix)
    await store.put(prefix + "eph", "x", lease.id)
    it = store.watch(prefix, rev + 1).__aiter__()
    assert (await next_event(it)).type == "put"
    ev = await next_event(it, timeout=10.0)  # etcd's lessor checks every 500 ms
    assert (ev.type, ev.key) == ("delete", prefix + "eph")
    with pytest.raises(LeaseNotFound):
        await store.keepalive(lease.id)


async def test_watch_from_revision_replays_history_in_order(store, prefix):
    _, start = await store.range(prefix)
    for i in range(5):
        await store.put(prefix + f"k{i}", str(i))
    await store.delete(prefix + "k0")
    it = store.watch(prefix, start + 1).__aiter__()
    evs = [await next_event(it) for _ in range(6)]
    assert [e.type for e in evs] == ["put"] * 5 + ["delete"]
    assert [e.revision for e in evs] == list(range(start + 1, start + 7))
    await store.put(prefix + "later", "L")
    ev = await next_event(it)
    assert (ev.key, ev.value, ev.revision) == (prefix + "later", "L", start + 7)


async def test_watch_ignores_other_prefixes(store, prefix):
    _, rev = await store.range(prefix)
    await store.put(prefix + "zz/other", "no")  # same prefix tree
    await store.put(prefix[:-1] + "X", "outside")
    it = store.watch(prefix + "zz/", rev + 1).__aiter__()
    ev = await next_event(it)
    assert ev.key == prefix + "zz/other"
    await store.put(prefix + "zz/second", "yes")
    assert (await next_event(it)).key == prefix + "zz/second"


async def test_a_watch_of_a_range_is_sent_only_its_keys(store, prefix):
    """The mirror watches [events0, prefix end): every agent's record of what
    happened is not sent to every agent."""
    _, rev = await store.range(prefix)
    for key in ("a", "b/1", "c", "d"):
        await store.put(prefix + key, key)
    it = store.watch(prefix + "b", rev + 1, range_end=prefix + "d").__aiter__()
    assert [(await next_event(it)).key for _ in range(2)] == [prefix + "b/1", prefix + "c"]
    await store.put(prefix + "d", "past the end")
    await store.put(prefix + "a", "before the start")
    await store.put(prefix + "bb", "inside")
    assert (await next_event(it)).key == prefix + "bb"


async def test_session_and_election(store, prefix):
    clock = SystemClock()
    s1 = Session(store, clock, ttl=2, keepalive_interval=0.5)
    s2 = Session(store, clock, ttl=2, keepalive_interval=0.5)
    await s1.open()
    await s2.open()
    e1, e2 = (Election(store, prefix + "leader", s, n) for s, n in ((s1, "a"), (s2, "b")))
    t1 = await e1.try_campaign()
    assert t1 and await e2.try_campaign() is None
    assert (await e2.leader()).name == "a"
    observed = e2.observe().__aiter__()
    assert (await next_event(observed)).token == t1
    waiter = asyncio.create_task(e2.campaign())
    await s1.close(revoke=True)  # graceful stop: lease revoked, key gone at once
    assert await next_event(observed) is None
    t2 = await asyncio.wait_for(waiter, 5)
    assert t2 > t1, "fencing tokens strictly increase"
    assert (await next_event(observed)).name == "b"
    assert await e1.resign(t1) is False, "a stale resign never removes the successor's key"
    assert await e2.resign(t2) is True
    await s2.close()


async def test_session_done_when_lease_revoked_elsewhere(store, prefix):
    s = Session(store, SystemClock(), ttl=2, keepalive_interval=0.3, retry_interval=0.05)
    await s.open()
    await store.revoke(s.lease_id)
    await asyncio.wait_for(s.done.wait(), 5)
    assert "expired or was revoked" in s.lost_reason
    await s.close()


async def test_watch_from_compacted_revision_fails_clearly(store, prefix):
    from vigil.errors import WatchCompacted

    r1 = await store.put(prefix + "c", "1")
    r2 = await store.put(prefix + "c", "2")
    await store.compact(r2)
    it = store.watch(prefix, r1).__aiter__()
    with pytest.raises(WatchCompacted):
        await next_event(it)


async def test_time_to_live_reads_zero_in_the_last_second(store, prefix):
    lease = await store.grant(1)
    # etcd floors the remaining time: a 1 s lease reads 0 (not "missing") until revoked.
    assert await store.lease_left(lease.id) == (0, lease.ttl)
    await store.revoke(lease.id)
    assert await store.time_to_live(lease.id) == -1


async def test_a_watch_that_does_not_resume_ends_when_the_store_is_lost(store, prefix, request):
    """A mirror decides on what its watch told it, so it must learn when the
    watch may have fallen behind: etcd ends a watch whose member lost its raft
    leader (the require-leader flag; without it the stream stays open and
    silent), the fake one whose store is marked unavailable."""
    _, rev = await store.range(prefix)
    resuming = store.watch(prefix, rev + 1).__aiter__()
    ending = store.watch(prefix, rev + 1, resume=False).__aiter__()
    await store.put(prefix + "a", "1")
    assert (await next_event(resuming)).key == (await next_event(ending)).key == prefix + "a"
    with _store_lost(store, request):
        with pytest.raises(StoreUnavailable):
            await next_event(ending, 20.0)
    await store.put(prefix + "b", "2")  # the resuming watch carries on, from the next revision
    assert (await next_event(resuming, 20.0)).key == prefix + "b"


@contextlib.contextmanager
def _store_lost(store, request):
    """The store unreachable for the block: marked so (the fake), or the etcd
    member the store talks to left without a raft leader (the others paused)."""
    if isinstance(store, MemoryStore):
        store.available = False
        try:
            yield
        finally:
            store.available = True
        return
    cluster = request.getfixturevalue("etcd_cluster")
    others = [m for m in cluster.members if m.client_url != store.endpoints[store._current]]
    for m in others:
        cluster.kill(m.name, signal.SIGSTOP)
    try:
        yield
    finally:
        for m in others:
            cluster.kill(m.name, signal.SIGCONT)
        cluster.wait_healthy(30)
