import asyncio

import pytest

from vigil.router.idempotency import IdempotencyCache, Mismatch, Result, fingerprint

R = Result(200, (("Content-Type", "application/json"),), b"{}")
FP = fingerprint("POST", "/v1/pay", b'{"amount": 5}')


async def test_first_owns_then_replays_within_window():
    c = IdempotencyCache(window=10)
    assert c.begin("k", FP, 0.0) is None
    c.finish("k", R, 1.0)
    assert c.begin("k", FP, 5.0) == R and c.replays == 1
    assert c.begin("k", FP, 11.5) is None, "after the window the key is new again"


async def test_concurrent_duplicate_waits_for_the_first():
    c = IdempotencyCache()
    assert c.begin("k", FP, 0.0) is None
    waiter = c.begin("k", FP, 0.1)
    assert isinstance(waiter, asyncio.Future)
    c.finish("k", R, 0.2)
    assert await waiter == R


async def test_abandoned_key_fails_waiters_and_frees_the_key():
    c = IdempotencyCache()
    c.begin("k", FP, 0.0)
    waiter = c.begin("k", FP, 0.0)
    c.abandon("k", RuntimeError("node died"))
    with pytest.raises(RuntimeError):
        await waiter
    assert c.begin("k", FP, 1.0) is None


async def test_bounded_entries():
    c = IdempotencyCache(max_entries=2)
    for k in "abc":
        c.begin(k, FP, 0.0)
        c.finish(k, R, 0.0)
    assert c.begin("a", FP, 0.0) is None and c.begin("c", FP, 0.0) == R


async def test_key_is_bound_to_method_path_and_body():
    """Issue 9 #2: the same key with another body returned the first client's answer."""
    c = IdempotencyCache()
    c.begin("k", FP, 0.0)
    other = fingerprint("POST", "/v1/pay", b'{"amount": 500}')
    assert c.begin("k", other, 0.1) == Mismatch("POST /v1/pay"), "while the first still runs"
    c.finish("k", R, 0.2)
    assert isinstance(c.begin("k", other, 0.3), Mismatch) and c.mismatches == 2
    assert c.begin("k", FP, 0.4) == R


async def test_client_errors_are_not_kept_and_failures_that_may_have_run_are():
    c = IdempotencyCache()
    c.begin("bad", FP, 0.0)
    c.finish("bad", Result(400, (), b"no"), 0.0)
    assert c.begin("bad", FP, 0.1) is None, "a 4xx did nothing: the key is free again"
    c.begin("lost", FP, 0.0)
    c.finish("lost", Result(504, (), b"timed out"), 0.0, keep=True)
    assert c.begin("lost", FP, 0.1).status == 504, "it may have run: never again under this key"


async def test_bytes_are_bounded_and_a_huge_answer_is_done_but_not_replayable():
    c = IdempotencyCache(max_bytes=100, max_result_bytes=60)
    c.begin("huge", FP, 0.0)
    c.finish("huge", Result(200, (), b"x" * 61), 0.0)
    assert c.begin("huge", FP, 0.1).body is None
    for k in "abc":
        c.begin(k, FP, 1.0)
        c.finish(k, Result(200, (), b"y" * 40), 1.0)
    assert c._bytes <= 100 and c.begin("a", FP, 1.1) is None, "the oldest bodies went first"
