"""A watch through EtcdStore survives the loss of the member it streams from
and resumes from the last seen revision: no change is missed or repeated."""

from __future__ import annotations

import asyncio
import uuid

from vigil.store.etcd import EtcdStore


async def test_watch_resumes_after_member_sigkill(etcd_cluster):
    prefix = f"/resume/{uuid.uuid4().hex[:8]}/"
    writer = EtcdStore(etcd_cluster.endpoints, timeout=5.0)
    watcher = EtcdStore(etcd_cluster.endpoints, timeout=5.0)
    try:
        _, start = await writer.range(prefix)
        it = watcher.watch(prefix, start + 1).__aiter__()
        for i in range(5):
            await writer.put(prefix + f"k{i}", str(i))
        got = [await asyncio.wait_for(it.__anext__(), 10) for _ in range(5)]
        streaming_from = watcher.endpoints[watcher._current]
        victim = next(m for m in etcd_cluster.members if m.client_url == streaming_from)
        etcd_cluster.kill(victim.name)
        try:
            for i in range(5, 15):
                await writer.put(prefix + f"k{i}", str(i))
            got += [await asyncio.wait_for(it.__anext__(), 20) for _ in range(10)]
        finally:
            etcd_cluster.start(victim.name)
            etcd_cluster.wait_healthy(30)
        assert [e.value for e in got] == [str(i) for i in range(15)]
        revs = [e.revision for e in got]
        assert revs == sorted(set(revs)), "in order, each change exactly once"
    finally:
        await writer.close()
        await watcher.close()


async def test_a_watch_that_must_not_resume_ends_when_its_member_freezes(etcd_cluster):
    """A frozen member (SIGSTOP: the kernel still holds the TCP connection) keeps
    a watch open and silent, and its raft peers still have a leader, so the
    require-leader flag never fires; the watch ends once a request the store
    sends to that member fails and goes elsewhere."""
    import signal

    from vigil.errors import StoreUnavailable

    prefix = f"/frozen/{uuid.uuid4().hex[:8]}/"
    store = EtcdStore(etcd_cluster.endpoints, timeout=2.0)
    try:
        _, start = await store.range(prefix)
        it = store.watch(prefix, start + 1, resume=False).__aiter__()
        await store.put(prefix + "a", "1")
        assert (await asyncio.wait_for(it.__anext__(), 10)).key == prefix + "a"
        streaming_from = store.endpoints[store._current]
        victim = next(m for m in etcd_cluster.members if m.client_url == streaming_from)
        etcd_cluster.kill(victim.name, signal.SIGSTOP)
        try:
            ending = asyncio.ensure_future(it.__anext__())
            await store.put(prefix + "b", "2")  # times out on the frozen member, lands on another
            try:
                await asyncio.wait_for(ending, 10)
                raise AssertionError("the watch went on")
            except StoreUnavailable:
                pass
        finally:
            etcd_cluster.kill(victim.name, signal.SIGCONT)
            etcd_cluster.wait_healthy(30)
    finally:
        await store.close()
