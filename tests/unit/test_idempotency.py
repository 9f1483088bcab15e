import asyncio

import pytest

from vigil.router.idempotency import IdempotencyCache, Mismatch, Result, fingerprint, keeps, scope

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


async def test_key_is_bound_to_method_path_and_body():
    """Issue 9 #2: the same key with another body returned the first client's answer."""
    c = IdempotencyCache()
    c.begin("k", FP, 0.0)
    other = fingerprint("POST", "/v1/pay", b'{"amount": 500}')
    assert c.begin("k", other, 0.1) == Mismatch("POST /v1/pay"), "while the first still runs"
    c.finish("k", R, 0.2)
    assert isinstance(c.begin("k", other, 0.3), Mismatch) and c.mismatches == 2
    assert c.begin("k", FP, 0.4) == R


@pytest.mark.parametrize("status, headers, kept", [
    (200, [("X-Vigil-Node", "a")], True),
    (500, [("X-Vigil-Node", "a")], True),  # the backend's own 5xx: it may have acted (B-L6)
    (400, [("X-Vigil-Node", "a")], False),  # the backend refused it: nothing ran
    (429, [("Retry-After", "1")], False),  # shed by the router: never sent
    (503, [], False),  # no node could take it: never sent
    (504, [("X-Vigil-Outcome", "unknown")], True),  # sent, then no answer: it may have run
    (502, [("X-Vigil-Outcome", "unknown"), ("X-Vigil-Node", "a")], True),
])
def test_what_settles_a_key(status, headers, kept):
    assert keeps(status, headers) is kept


def test_a_key_is_scoped_to_its_callers_authorization():
    assert scope("k", "Bearer alice") == scope("k", "Bearer alice") != scope("k", "Bearer mallory")
    assert scope("k", "") != scope("k", "Bearer alice")
    assert scope("ab", "c") != scope("b", "ac"), "the boundary between the two is not ambiguous"


async def test_bytes_are_bounded_and_a_huge_answer_is_done_but_not_replayable():
    c = IdempotencyCache(max_bytes=100, max_result_bytes=60)
    c.begin("huge", FP, 0.0)
    c.finish("huge", Result(200, (), b"x" * 61), 0.0)
    assert c.begin("huge", FP, 0.1).body is None
    for k in "abc":
        c.begin(k, FP, 1.0)
        c.finish(k, Result(200, (), b"y" * 40), 1.0)
    assert c._bytes <= 100 and c.begin("a", FP, 1.1) is None, "the oldest bodies went first (the " \
        "router then asks etcd's marker: tests/unit/test_keyed.py)"
