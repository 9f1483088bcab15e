"""Where a cycle's snapshot comes from (vigil.agent.snapshot_source): the
mirror holds our own writes before it is used (read-your-writes by revision,
no range read), and a failed range read is not retried on every cycle (60
agents doing so kept a slow etcd from recovering)."""

from __future__ import annotations

import asyncio

import pytest

from vigil.agent.snapshot_source import MIRROR_RESYNC, SnapshotSource
from vigil.errors import StoreUnavailable
from vigil.store.keys import Keys
from vigil.store.mirror import RegistryMirror
from vigil.store.registry import Registry
from vigil.testing.memory_store import MemoryStore
from vigil.testing.wait import wait_until

K = Keys("c")


class CountingRegistry(Registry):
    reads = 0

    async def read(self):
        self.reads += 1
        return await super().read()


async def _source(answers=lambda now: True):
    store = MemoryStore()
    registry, mirror = CountingRegistry(store, K), RegistryMirror(K)
    source = SnapshotSource(registry, mirror, answers, backoff=1.0, seed="n1")

    async def follow():
        rev = mirror.resume_after()
        if rev is None:
            _, rev = await store.range(K.leader)
        mirror.watching(rev)
        async for ev in store.watch(mirror.start, rev + 1, range_end=mirror.end):
            mirror.apply(ev)
    return store, registry, mirror, source, follow


async def test_a_write_of_ours_is_in_the_next_snapshot_without_a_range_read():
    store, registry, mirror, source, follow = await _source()
    await source.get(0.0)  # the first read loads the mirror
    watch = asyncio.get_running_loop().create_task(follow())
    try:
        await wait_until(lambda: mirror.current, 5, "the mirror to follow its watch")
        rev = await registry.set_state("n2", "failed")
        source.wrote(rev)
        await wait_until(lambda: mirror.revision >= rev, 5, "the watch to bring our write")
        snap = await source.get(1.0)
        assert snap.states == {"n2": "failed"} and registry.reads == 1, "the mirror had it: no read"
        await source.get(MIRROR_RESYNC - 0.1)
        assert registry.reads == 1, "just before the resync: still the mirror"
        await source.get(MIRROR_RESYNC)
        assert registry.reads == 2, "the resync"
        await source.get(MIRROR_RESYNC + 1.0)
        assert registry.reads == 2, "after it, the mirror again"
        source.invalidate()
        await source.get(MIRROR_RESYNC + 2.0)
        assert registry.reads == 3, "a role change or a write of unknown outcome: read"
        await source.get(MIRROR_RESYNC + 2.1)
        assert registry.reads == 3, "then the mirror again"
        source.wrote(rev + 100)  # a write of ours the watch has not brought yet
        await source.get(MIRROR_RESYNC + 2.2)
        await source.get(MIRROR_RESYNC + 2.3)
        assert registry.reads == 5, "our own write: read, not limited (it is the leader's, one agent)"
    finally:
        watch.cancel()


async def test_a_failed_read_is_not_retried_before_the_backoff():
    store, registry, mirror, source, _ = await _source(answers=lambda now: False)
    store.available = False
    with pytest.raises(StoreUnavailable):
        await source.get(10.0)
    assert registry.reads == 1
    with pytest.raises(StoreUnavailable, match="reading again"):
        await source.get(10.4)
    assert registry.reads == 1, "within the backoff: no read sent"
    store.available = True
    snap = await source.get(11.0)  # backoff·U(0.5, 1) <= 1 s has passed
    assert registry.reads == 2 and snap.leader is None


async def test_a_doubted_mirror_is_read_at_most_once_per_backoff():
    """Keep-alives failing (etcd slow, not gone): one read, then the cycles wait
    instead of each sending etcd another read of the whole registry."""
    answers = {"ok": True}
    store, registry, mirror, source, follow = await _source(answers=lambda now: answers["ok"])
    await source.get(0.0)
    watch = asyncio.get_running_loop().create_task(follow())
    try:
        await wait_until(lambda: mirror.current, 5, "the mirror to follow its watch")
        answers["ok"] = False
        await source.get(5.0)
        assert registry.reads == 2, "doubted: one read"
        with pytest.raises(StoreUnavailable, match="keep-alives do not land"):
            await source.get(5.3)
        assert registry.reads == 2
        await source.get(6.0)
        assert registry.reads == 3, "after the backoff, the next"
        answers["ok"] = True
        await source.get(6.1)
        assert registry.reads == 3, "trusted again: the mirror"
    finally:
        watch.cancel()


async def test_a_watch_that_started_after_the_last_read_is_brought_level_at_once():
    """An agent's start: its first read and its watch's start race, and the watch may
    start at a later revision than the read (a write came between). The mirror is not
    current, but the watch runs and etcd answers: the next cycle reads at once (not
    once per backoff), and the mirror is current after it."""
    store, registry, mirror, source, _ = await _source()

    async def follow_fresh():  # as RegistryWatch.run does when it starts before the first load
        _, rev = await store.range(K.leader)
        mirror.watching(rev)
        async for ev in store.watch(mirror.start, rev + 1, range_end=mirror.end):
            mirror.apply(ev)
    await source.get(0.0)
    await registry.set_state("n2", "standby")  # between the read and the watch's start
    watch = asyncio.get_running_loop().create_task(follow_fresh())
    try:
        await wait_until(lambda: mirror.watch_start is not None, 5, "the watch to start")
        assert not mirror.current, "the watch started after the mirror's read"
        snap = await source.get(0.1)  # within the backoff of the first read
        assert registry.reads == 2 and snap.states == {"n2": "standby"}, "read at once"
        assert mirror.current
        await source.get(0.2)
        assert registry.reads == 2, "the mirror from now on"
    finally:
        watch.cancel()
