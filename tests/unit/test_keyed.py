"""Keyed requests over the in-memory store (held to etcd by the conformance
suite) with an injected clock: a key is never run twice inside its window,
whatever this router forgot, and its etcd marker lives at least that window
and is bounded (issue 22 #3)."""

from __future__ import annotations

import asyncio
import json

import pytest

from vigil.router.answers import Answered
from vigil.router.http1 import Incoming
from vigil.router.keyed import KeyedRequests
from vigil.store.idem import MAX_KEPT_BODY, BadMarker, Marker, encode_marker, parse_marker
from vigil.store.keys import Keys
from vigil.errors import StoreUnavailable
from vigil.router.idempotency import scope
from vigil.testing import FakeClock, MemoryStore
from vigil.testing.wait import wait_until

WINDOW = 600.0


def request(key: str = "k", body: bytes = b'{"amount": 5}') -> Incoming:
    return Incoming("POST", "/v1/pay", [("Idempotency-Key", key)], body, True)


class Backend:
    def __init__(self, status: int = 200, body: bytes = b'{"paid": true}'):
        self.runs, self.status, self.body = 0, status, body
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def __call__(self, req: Incoming, t0: float) -> Answered:
        self.runs += 1
        self.entered.set()
        if self.gate:
            await self.gate.wait()
        return Answered(self.status, [("X-Vigil-Node", "a")], self.body)


class LosesAnswers(MemoryStore):
    """Applies a create, then says etcd did not answer (a timeout after the write)."""
    lose = 0

    async def create(self, key: str, value: str, lease: int = 0):
        out = await super().create(key, value, lease)
        if self.lose:
            self.lose -= 1
            raise StoreUnavailable("etcd did not answer within 1 s (the write was applied)")
        return out


def keyed(store: MemoryStore, clock: FakeClock, backend: Backend, name: str = "r1") -> KeyedRequests:
    return KeyedRequests(store, "c", name, WINDOW, clock, backend)


async def test_a_key_this_router_dropped_is_answered_by_its_marker_never_run_again():
    clock, backend = FakeClock(), Backend()
    k = keyed(MemoryStore(clock), clock, backend)
    k.cache.max_entries = 1
    for key in ("a", "b", "c"):
        assert (await k.handle(request(key), key, 0.0)).status == 200
    assert len(k.cache._done) == 1
    again = await k.handle(request("a"), "a", 0.0)
    assert again.status == 200 and again.header("X-Vigil-Idempotent-Replay") == "true"
    assert again.body == backend.body and backend.runs == 3


async def test_a_marker_lives_the_whole_window_and_not_much_longer():
    clock, backend = FakeClock(), Backend()
    store = MemoryStore(clock)
    k = keyed(store, clock, backend)
    await k.handle(request("early"), "early", 0.0)
    clock.advance(WINDOW / 10 - 1)  # same bucket: same lease
    await k.handle(request("late"), "late", 0.0)
    assert len(store._leases) == 1
    clock.advance(WINDOW - 1)  # "late" is 599 s old: still held, even with a fresh router
    store.expire()
    fresh = keyed(store, clock, backend, "r2")
    assert (await fresh.handle(request("late"), "late", 0.0)).header("X-Vigil-Idempotent-Replay") == "true"
    clock.advance(WINDOW / 10 + 2)  # past window + bucket for both
    store.expire()
    keys, _ = await store.range(Keys("c").idempotency)
    assert keys == [] and backend.runs == 2, "the lease let the window's markers go"


async def test_leases_are_bounded_by_buckets_not_requests():
    clock, backend = FakeClock(), Backend()
    store = MemoryStore(clock)
    k = keyed(store, clock, backend)
    for i in range(300):  # one keyed request every 10 s for 50 minutes
        await k.handle(request(f"k{i}"), f"k{i}", 0.0)
        clock.advance(10)
        store.expire()
    assert len(store._leases) <= 11


async def test_an_owner_stopped_mid_request_leaves_its_key_in_flight_for_the_window():
    clock, backend = FakeClock(), Backend()
    store = MemoryStore(clock)
    backend.gate = asyncio.Event()
    first = keyed(store, clock, backend)
    client = asyncio.get_running_loop().create_task(first.handle(request(), "k", 0.0))
    await asyncio.wait_for(backend.entered.wait(), 10)
    first.close()  # its router is killed
    with pytest.raises(asyncio.CancelledError):
        await client
    restarted = keyed(store, clock, backend)
    answer = await restarted.handle(request(), "k", 0.0)
    assert answer.status == 409 and b"in flight at router 'r1'" in answer.body and backend.runs == 1
    assert answer.header("Retry-After") == "1"


async def test_an_unreadable_marker_is_an_unknown_outcome_not_a_free_key():
    clock, backend = FakeClock(), Backend()
    store = MemoryStore(clock)
    k = keyed(store, clock, backend)
    await store.put(Keys("c").idem_marker(scope("k", "")), "{not json")
    answer = await k.handle(request(), "k", 0.0)
    assert answer.status == 409 and b"unreadable" in answer.body and backend.runs == 0


def test_markers_round_trip_and_a_large_answer_keeps_only_its_digest():
    m = Marker("done", "POST /v1/pay abc", "r1", "c1", 201, (("Content-Type", "application/json"),), b"{}")
    assert parse_marker(encode_marker(m)) == Marker(m.state, m.fp, m.router, "c1", 201, m.headers, b"{}",
                                                    parse_marker(encode_marker(m)).body_sha256)
    big = parse_marker(encode_marker(Marker("done", "fp", "r1", "c1", 200, (), b"x" * (MAX_KEPT_BODY + 1))))
    assert isinstance(big, Marker) and big.body is None and len(big.body_sha256) == 64


@pytest.mark.parametrize("value", [
    "", "[]", "null", '{"state": "done"}', '{"state": "in_flight", "fp": 5, "router": "r"}',
    '{"state": "done", "fp": "f", "router": "r", "status": 1e999, "headers": []}',
    '{"state": "done", "fp": "f", "router": "r", "status": true, "headers": []}',
    '{"state": "done", "fp": "f", "router": "r", "status": 200, "headers": [["a"]]}',
    '{"state": "done", "fp": "f", "router": "r", "status": 200, "headers": [], "body": "!!"}',
    '{"state": "done", "fp": "f", "router": "r", "status": 200, "headers": [], "body_sha256": 7}',
    "[" * 100_000, '{"status": ' + "9" * 5000 + "}", "x" * (1 << 20),
])
def test_a_bad_marker_is_named_never_raised(value):
    assert isinstance(parse_marker(value), BadMarker)


def test_a_marker_value_is_json_a_router_of_any_version_can_read():
    d = json.loads(encode_marker(Marker("in_flight", "POST /v1/pay abc", "r1")))
    assert d["v"] == 1 and d["state"] == "in_flight" and d["body"] is None


async def test_a_claim_etcd_applied_but_never_confirmed_is_taken_back_not_called_in_flight():
    clock, backend = FakeClock(), Backend()
    store = LosesAnswers(clock)
    store.lose = 1
    k = keyed(store, clock, backend)
    first = await k.handle(request(), "k", 0.0)
    assert first.status == 503 and backend.runs == 0, "refused: nothing sent"
    retry = await k.handle(request(), "k", 0.0)
    assert retry.status == 200 and backend.runs == 1, "its own marker, under which nothing ran"
    assert (await keyed(store, clock, backend, "r2").handle(request(), "k", 0.0)).status == 200
    assert backend.runs == 1


async def test_a_refused_request_whose_marker_etcd_did_not_free_may_run_again_here():
    clock, backend = FakeClock(), Backend(status=400)
    store = MemoryStore(clock)
    k = keyed(store, clock, backend)
    real = backend.__call__

    async def then_etcd_fails(req: Incoming, t0: float) -> Answered:
        answer = await real(req, t0)
        store.available = False  # the free after it fails
        return answer
    k.route = then_etcd_fails
    assert (await k.handle(request(), "k", 0.0)).status == 400
    store.available = True
    k.route = backend
    assert (await keyed(store, clock, backend, "r2").handle(request(), "k", 0.0)).status == 409
    assert (await k.handle(request(), "k", 0.0)).status == 400 and backend.runs == 2, \
        "a 4xx ran nothing: this router takes its marker back"


async def test_an_outcome_etcd_did_not_take_is_recorded_when_it_is_back():
    store, backend = MemoryStore(), Backend()
    k = KeyedRequests(store, "c", "r1", WINDOW, store.clock, backend)
    real = backend.__call__

    async def then_etcd_fails(req: Incoming, t0: float) -> Answered:
        answer = await real(req, t0)
        store.available = False
        return answer
    k.route = then_etcd_fails
    assert (await k.handle(request(), "k", 0.0)).status == 200
    other = KeyedRequests(store, "c", "r2", WINDOW, store.clock, backend)
    store.available = True
    assert (await other.handle(request(), "k", 0.0)).status == 409, "in flight until recorded"
    await wait_until(lambda: not k._recording, 20, "the outcome to be recorded (retried after 1 s)")
    again = await other.handle(request(), "k", 0.0)
    assert again.status == 200 and again.header("X-Vigil-Idempotent-Replay") == "true" and backend.runs == 1
