"""The watch's mirror of the registry equals a fresh range read after any
sequence of changes, and is never `current` when a change could have been
missed (watch started after the load, or stopped)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings, strategies as st

from vigil.store.base import WatchEvent
from vigil.store.keys import Keys
from vigil.store.mirror import RegistryMirror
from vigil.store.registry import Registry, snapshot_range
from vigil.testing.memory_store import MemoryStore
from vigil.testing.wait import wait_until

K = Keys("c")
NODES = ["n1", "n2", "n3"]


async def _apply_changes(store: MemoryStore, changes: list[tuple[str, str, int]]) -> None:
    lease = (await store.grant(10)).id
    for op, node, n in changes:
        if op == "member":
            await store.put(K.member(node), json.dumps({"name": node, "priority": n, "suspects": []}), lease)
        elif op == "state":
            await store.put(K.state(node), ["standby", "failed", "fenced"][n % 3])
        elif op == "leader":
            await store.delete(K.leader)
            await store.create(K.leader, node, lease)
        elif op == "event":
            await store.put(K.event(f"{n:016x}-{node}"), "{}")
        else:
            await store.delete(K.member(node))


async def _mirror_after(changes: list[tuple[str, str, int]]) -> tuple[RegistryMirror, Registry]:
    store = MemoryStore()
    registry, mirror = Registry(store, K), RegistryMirror(K)
    await _apply_changes(store, changes[: len(changes) // 2])
    _, rev = await store.range(K.leader, K.leader + "\0")
    mirror.watching(rev)
    watch = store.watch(K.prefix, rev + 1).__aiter__()
    mirror.load(*await registry.read())
    await _apply_changes(store, changes[len(changes) // 2:])
    while True:
        try:
            mirror.apply(await asyncio.wait_for(watch.__anext__(), 0.05))
        except asyncio.TimeoutError:  # nothing more to deliver: the store is idle
            break
    return mirror, registry


CHANGES = st.lists(st.tuples(st.sampled_from(["member", "state", "leader", "event", "gone"]),
                             st.sampled_from(NODES), st.integers(0, 1000)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(CHANGES)
def test_the_mirror_equals_a_fresh_read(changes):
    async def run():
        mirror, registry = await _mirror_after(changes)
        assert mirror.current
        fresh, mirrored = await registry.snapshot(), mirror.snapshot()
        assert mirrored.leader == fresh.leader and mirrored.members == fresh.members
        assert mirrored.states == fresh.states and mirrored.member_leases == fresh.member_leases
    asyncio.run(run())


def test_never_current_when_a_change_could_have_been_missed():
    m = RegistryMirror(K)
    assert not m.current and m.snapshot() is None
    m.load([], 10)
    assert not m.current, "no watch: changes after the load go unseen"
    m.watching(12)
    assert not m.current, "the watch streams from after 12: changes 11-12 were missed"
    m.watching(10)
    assert m.current
    m.stopped()
    assert not m.current


def _event(rev: int, node: str = "n1") -> WatchEvent:
    return WatchEvent("put", K.state(node), "standby", rev, rev, 0)


def test_a_watch_resumed_after_the_mirror_keeps_it_current_without_a_read():
    m = RegistryMirror(K)
    m.load([], 10)
    m.watching(10)
    m.apply(_event(11))
    m.stopped()
    assert not m.current and m.resume_after() == 10, "revision 11 again: it may have had more keys"
    m.watching(m.resume_after())
    assert m.current
    m.apply(_event(12))
    assert m.current and m.revision == 12


def test_every_key_of_one_revision_is_applied_even_across_a_broken_stream():
    """A lease's expiry deletes all its keys at one revision, a transaction puts
    several at one: each is applied, and a stream cut between them delivers that
    revision again when it resumes."""
    m = RegistryMirror(K)
    m.load([], 10)
    m.watching(10)
    m.apply(_event(11, "n1"))
    m.stopped()  # cut before n2's change at 11 arrived
    m.watching(m.resume_after())
    for node in ("n1", "n2", "n3"):
        m.apply(_event(11, node))
    assert m.current and m.snapshot().states == {n: "standby" for n in ("n1", "n2", "n3")}


def test_a_lease_expiry_reaches_the_mirror_whole():
    async def run():
        store = MemoryStore()
        registry, mirror = Registry(store, K), RegistryMirror(K)
        lease = (await store.grant(10)).id
        _, rev = await store.range(K.leader, K.leader + "\0")
        mirror.watching(rev)
        mirror.load(*await registry.read())

        async def pump():
            async for ev in store.watch(K.prefix, rev + 1):
                mirror.apply(ev)
        pumping = asyncio.get_running_loop().create_task(pump())

        async def caught_up():
            await wait_until(lambda: mirror.revision >= store.revision, 5, "the watch to deliver every change")
            return mirror.current and mirror.snapshot().members == (await registry.snapshot()).members
        await store.txn([], [(K.member(n), json.dumps({"name": n, "priority": 1, "suspects": []}), lease)
                             for n in NODES])
        assert await caught_up() and len(mirror.snapshot().members) == len(NODES)
        await store.put(K.member("n1"), json.dumps({"name": "n1", "priority": 2, "suspects": []}), lease)
        await store.revoke(lease)
        assert await caught_up() and mirror.snapshot().members == {}
        pumping.cancel()
        revisions = [e.revision for e in store._history if e.key.startswith(K.prefix)]
        assert len(set(revisions)) == 3, "the transaction, the put, the expiry: one revision each, as etcd's"
    asyncio.run(run())


def test_changes_from_a_watch_that_started_late_never_make_it_current():
    m = RegistryMirror(K)
    m.load([], 10)
    m.watching(15)  # changes 11-15 went unseen
    m.apply(_event(16))
    assert not m.current, "revision 16 is past the watch's start, but 11-15 are missing"
    m.watching(16)
    assert not m.current
    assert m.load([], 16) and m.current


def test_a_read_older_than_a_change_already_applied_is_refused():
    m = RegistryMirror(K)
    m.load([], 10)
    m.watching(10)
    m.apply(_event(12))
    assert not m.load([], 11), "loading it would lose the change at 12"
    assert m.current and m.snapshot().states == {"n1": "standby"}
    m.forget()
    assert not m.current and m.resume_after() is None


def test_a_change_re_parses_only_the_record_it_changed():
    """A mirror's snapshot after one change reuses every other parsed record
    (1,000 members must not cost 1,000 parses per change in every agent)."""
    async def go():
        store = MemoryStore()
        mirror = RegistryMirror(K)
        await _apply_changes(store, [("member", n, 1) for n in NODES])
        mirror.load(*await store.range(*snapshot_range(K)))
        before = mirror.snapshot().members
        rev = mirror.revision
        lease = (await store.grant(10)).id
        await store.put(K.member("n2"), json.dumps({"name": "n2", "priority": 7, "suspects": []}), lease)
        await store.delete(K.member("n3"))
        async for ev in store.watch(K.prefix, rev + 1):
            mirror.apply(ev)
            if ev.type == "delete":
                break
        after = mirror.snapshot().members
        assert after["n1"] is before["n1"] and after["n2"].priority == 7 and "n3" not in after
    asyncio.run(go())
