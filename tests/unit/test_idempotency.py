import asyncio

import pytest

from vigil.router.idempotency import IdempotencyCache, Result

R = Result(200, (("Content-Type", "application/json"),), b"{}")


async def test_first_owns_then_replays_within_window():
    c = IdempotencyCache(window=10)
    assert c.begin("k", 0.0) is None
    c.finish("k", R, 1.0)
    assert c.begin("k", 5.0) == R and c.replays == 1
    assert c.begin("k", 11.5) is None, "after the window the key is new again"


async def test_concurrent_duplicate_waits_for_the_first():
    c = IdempotencyCache()
    assert c.begin("k", 0.0) is None
    waiter = c.begin("k", 0.1)
    assert isinstance(waiter, asyncio.Future)
    c.finish("k", R, 0.2)
    assert await waiter == R


async def test_abandoned_key_fails_waiters_and_frees_the_key():
    c = IdempotencyCache()
    c.begin("k", 0.0)
    waiter = c.begin("k", 0.0)
    c.abandon("k", RuntimeError("node died"))
    with pytest.raises(RuntimeError):
        await waiter
    assert c.begin("k", 1.0) is None


async def test_bounded_entries():
    c = IdempotencyCache(max_entries=2)
    for k in "abc":
        c.begin(k, 0.0)
        c.finish(k, R, 0.0)
    assert c.begin("a", 0.0) is None and c.begin("c", 0.0) == R
