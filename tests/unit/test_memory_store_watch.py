"""MemoryStore's watch must wait, not spin, after a change outside its prefix
(it spun for ever once a router wrote an Idempotency-Key marker beside the
cluster's prefix, and the whole event loop with it)."""

from __future__ import annotations

import asyncio
import threading

from vigil.testing import MemoryStore


async def _watch_across_a_foreign_change() -> list[str]:
    store = MemoryStore()
    seen: asyncio.Queue = asyncio.Queue()
    start = store.revision + 1

    async def watcher() -> None:
        async for ev in store.watch("/vigil/c/", start):
            seen.put_nowait(ev.key)
    async def foreign() -> None:  # woken by the same change, after the first watcher
        async for ev in store.watch("/vigil-idem/", start):
            other.set_result(ev.key)
            return
    other: asyncio.Future = asyncio.get_running_loop().create_future()
    tasks = [asyncio.get_running_loop().create_task(w()) for w in (watcher, foreign)]
    await store.put("/vigil/c/members/a", "inside")
    keys = [await asyncio.wait_for(seen.get(), 10)]  # both watchers now wait for the next change
    await store.put("/vigil-idem/c/k", "outside the prefix")
    await asyncio.wait_for(other, 10)  # the first watcher was woken before it
    await store.put("/vigil/c/members/b", "inside")
    keys.append(await asyncio.wait_for(seen.get(), 10))
    for task in tasks:
        task.cancel()
    return keys


def test_a_change_outside_the_prefix_leaves_the_watch_waiting():
    # In a thread of its own: a spinning loop cannot be timed out from inside it.
    result: list[list[str]] = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(_watch_across_a_foreign_change())),
                         daemon=True)
    t.start()
    t.join(30)
    assert result == [["/vigil/c/members/a", "/vigil/c/members/b"]], "the watch spun on the foreign change"
