"""Publishing to an etcd that fails (vigil.agent.publisher, vigil.store.events):
the member record's retries back off instead of coming every cycle, while a
state change still goes out at once; events go in order, in batches, and a
batch that fails stays pending, whole."""

from __future__ import annotations

from vigil.agent.publisher import RETRY_FIRST, RETRY_MAX, RecordPublisher
from vigil.store.events import BATCH, BATCH_BYTES, EventLog, read_events
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.registry import Registry
from vigil.testing.clock import FakeClock
from vigil.testing.memory_store import MemoryStore
from vigil.testing.wait import wait_until


async def put_ends(pub: RecordPublisher) -> None:
    await wait_until(lambda: pub._task is None or pub._task.done(), 5, "the put to end")


async def test_failed_puts_are_retried_after_a_growing_pause_and_a_state_change_goes_at_once():
    clock, store = FakeClock(), MemoryStore()
    suspects = ["n2"]
    lease = (await store.grant(10)).id
    pub = RecordPublisher(Registry(store, Keys("c")), clock,
                          lambda: MemberRecord("n1", "http://127.0.0.1:1", suspects=tuple(suspects)),
                          lambda: lease, lambda: list(suspects))
    store.available = False
    pub.request()
    await put_ends(pub)
    assert store.refused == 1 and RETRY_FIRST / 2 <= pub._retry_at - clock.now() <= RETRY_FIRST
    pub.retry()  # the next cycle, at once: not yet
    await put_ends(pub)
    assert store.refused == 1
    pauses = []
    for _ in range(10):
        clock.advance(pub._retry_at - clock.now())
        pub.retry()
        await put_ends(pub)
        pauses.append(pub._retry_at - clock.now())
    assert store.refused == 11 and max(pauses) <= RETRY_MAX and pauses[-1] >= RETRY_MAX / 2, pauses
    pub.request()  # a state change does not wait for the backoff
    await put_ends(pub)
    assert store.refused == 12
    store.available = True
    await pub.register(lease)  # a new session registers at once (vigil.agent.registration): the backoff ends
    assert pub._failures == 0 and pub._retry_at == 0.0 and not pub.unpublished()


async def test_events_go_in_order_in_batches_and_a_failed_batch_stays_pending_whole():
    clock, store = FakeClock(), MemoryStore()
    log = EventLog(store, Keys("c"), "n1", clock)
    for i in range(BATCH + 5):
        log.record("note", f"event {i}")
        clock.advance(0.001)  # ids sort by time
    store.available = False
    log.start()
    await wait_until(lambda: store.refused >= 1, 5, "the first batch refused")
    assert log.pending == BATCH + 5 and log.written == 0
    store.available = True
    await wait_until(lambda: log.pending == 0, 10, "every event written")
    assert log.written == BATCH + 5
    assert [e["cause"] for e in await read_events(store, Keys("c"))] == [f"event {i}" for i in range(BATCH + 5)]
    await log.stop()


async def test_large_events_are_split_by_bytes_not_only_by_count():
    clock, store = FakeClock(), MemoryStore()
    log = EventLog(store, Keys("c"), "n1", clock)
    txns = []
    real = store.txn

    async def counted(expect, puts, deletes=()):
        txns.append(len(puts))
        return await real(expect, puts, deletes)
    store.txn = counted
    for i in range(6):
        log.record("note", "x" * (BATCH_BYTES // 3), n=i)  # three fit in no batch
        clock.advance(0.001)
    await log.flush()
    assert log.written == 6 and max(txns) <= 2 and sum(txns) == 6, txns
