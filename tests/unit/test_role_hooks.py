"""The parts that learn of the role through Leadership.on_change: every hook
hears every change even when writing the change down fails or another hook
raises; the actuator controller writes only with the token of the term it was
started for and stops at the term's end; the registration reopens a lost
session and leaves no lease behind when it is stopped mid-registration."""

from __future__ import annotations

import asyncio

import pytest

from vigil.agent.controller import Controller
from vigil.agent.history import LeadershipHistory
from vigil.agent.leadership import Leadership
from vigil.agent.registration import Registration
from vigil.agent.vips import VipHolder
from vigil.agent.watchdog import Watchdog
from vigil.core.timing import Timing
from vigil.procs import free_ports
from vigil.store.keys import Keys
from vigil.store.member_record import MemberRecord
from vigil.store.registry import Registry
from vigil.testing import FakeClock, MemoryStore
from vigil.testing.wait import wait_until


def make(tmp_path, clock, kinds: list[str]) -> Leadership:
    return Leadership("n1", 2.0, clock, tmp_path, LeadershipHistory(tmp_path / "history.jsonl", "n1"),
                      Watchdog("off", None, None), VipHolder((), clock.now, lambda *a, **k: None),
                      lambda kind, cause, **details: kinds.append(kind))


def test_every_hook_hears_the_end_even_when_writing_it_fails_or_a_hook_raises(tmp_path):
    clock, kinds, heard = FakeClock(), [], []
    lead = make(tmp_path, clock, kinds)

    def broken(change):
        raise RuntimeError("a broken hook")
    lead.on_change += [broken, lambda change: heard.append(change.kind)]
    assert lead.acquire(7, clock.now())
    assert heard == ["acquired"], "a raising hook does not silence the next"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    lead.history.write = full_disk  # type: ignore[method-assign]
    with pytest.raises(OSError):
        lead.lose("etcd session lost")
    assert heard == ["acquired", "lost"], "the parts learn that the role ended though it was not written"
    assert not lead.is_leader()


async def test_the_controller_writes_for_one_term_and_stops_at_its_end(tmp_path):
    clock, kinds = FakeClock(), []
    lead = make(tmp_path, clock, kinds)
    (port,) = free_ports(1)  # nothing listens: each write fails at once and is retried
    ctl = Controller("n1", lambda: None, clock, lambda *a, **k: None, lead, f"http://127.0.0.1:{port}",
                     1, 0.05)
    lead.on_change.append(ctl.on_change)
    assert lead.acquire(7, clock.now())
    first = ctl._task
    assert first is not None and not first.done()
    lead.resign("switchover")
    await wait_until(lambda: first.done(), 5, "the writer to stop at the term's end")
    assert lead.acquire(8, clock.now())
    second = ctl._task
    assert second is not first and not second.done()
    lead.resign("done")
    await wait_until(lambda: second.done(), 5, "the second writer to stop")


async def test_a_writer_started_for_an_older_term_never_writes_in_a_newer_one(tmp_path):
    clock, kinds = FakeClock(), []
    lead = make(tmp_path, clock, kinds)
    (port,) = free_ports(1)
    ctl = Controller("n1", lambda: None, clock, lambda *a, **k: None, lead, f"http://127.0.0.1:{port}", 1, 0.05)
    assert lead.acquire(8, clock.now())
    await asyncio.wait_for(ctl._drive(7), 5)  # returns before its first write: token 7 is not this term's
    assert ctl.accepted == ctl.rejected == 0


def registration(store, clock, lost: list[str]) -> Registration:
    keys = Keys("c")
    return Registration("n1", store, clock, Timing(lease_ttl=2, keepalive_interval=0.05), Registry(store, keys),
                        keys.leader, lambda *a, **k: None, lambda: MemberRecord("n1", "http://127.0.0.1:1", incarnation=1),
                        lambda: [], lambda sent: None, lost.append, lambda: None)


async def test_a_lost_session_is_reported_and_a_new_one_registered(tmp_path):
    clock, lost = FakeClock(), []
    store = MemoryStore(clock)
    reg = registration(store, clock, lost)
    task = asyncio.get_running_loop().create_task(reg.run())
    try:
        await wait_until(lambda: reg.session_ok(), 5, "a session")
        first = reg.session.lease_id
        await store.revoke(first)
        await wait_until(lambda: lost and reg.session_ok() and reg.session.lease_id != first, 5,
                         "the loss reported and a new session opened")
        assert reg.election is not None and reg.lease() == reg.session.lease_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await reg.close()
