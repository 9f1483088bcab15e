"""When the registry's watch wakes the decision loop (vigil.agent.registry_watch):
the leader key, a switchover or a fencing marker at once; any other change at
once after a quiet SETTLE, else once, deferred to SETTLE after the last cycle
began; a cycle that begins takes every change applied so far."""

from __future__ import annotations

from vigil.agent.registry_watch import SETTLE, RegistryWatch
from vigil.store.base import WatchEvent
from vigil.store.keys import Keys
from vigil.store.mirror import RegistryMirror
from vigil.testing.memory_store import MemoryStore
from vigil.testing.wait import wait_until

K = Keys("c")


def _watch():
    now = {"t": 100.0}
    woken: list[float] = []
    w = RegistryWatch(MemoryStore(), K, RegistryMirror(K), lambda: woken.append(now["t"]), lambda: now["t"], "n1")
    return w, now, woken


def _ev(key: str) -> WatchEvent:
    return WatchEvent("put", key, "x", 7)


async def _deferred_fired(w: RegistryWatch, woken: list[float], before: int) -> None:
    await wait_until(lambda: len(woken) > before, 5, "the deferred wake (SETTLE of the loop's time)")


async def test_urgent_keys_wake_at_once_and_others_settle():
    w, now, woken = _watch()
    w.cycle_started(now["t"])
    for key in (K.leader, K.switchover, K.fence_marker("n2")):
        w._changed(_ev(key))
    assert len(woken) == 3, "leader key, switchover, fencing marker: at once, even within SETTLE"
    w._changed(_ev(K.member("n2")))
    w._changed(_ev(K.state("n3")))
    w._changed(_ev(K.payload("p1")))
    assert len(woken) == 3, "a member record or a state within SETTLE of the cycle: deferred"
    await _deferred_fired(w, woken, 3)
    assert len(woken) == 4, "two changes, one deferred wake; a payload wakes nothing"


async def test_a_change_after_a_quiet_settle_wakes_at_once_and_a_cycle_takes_the_pending_wake():
    w, now, woken = _watch()
    w.cycle_started(now["t"])
    now["t"] += SETTLE
    w._changed(_ev(K.member("n2")))
    assert len(woken) == 1, "SETTLE after the last cycle: at once"
    w.cycle_started(now["t"])
    w._changed(_ev(K.member("n3")))
    assert w._deferred is not None and not woken[1:]
    w.cycle_started(now["t"] + 0.01)  # a cycle began for another reason: it reads n3's change
    assert w._deferred is None, "the pending wake is taken by that cycle"
    w._changed(_ev(K.member("n4")))
    await _deferred_fired(w, woken, 1)
    assert len(woken) == 2


async def test_a_deleted_payload_record_is_handed_on_and_wakes_no_cycle():
    """A shard's owner record deleted (its node's lease expired): the batch job
    runner is told at once (it claims the orphan on it, not at its next poll)."""
    w, now, woken = _watch()
    gone: list[str] = []
    w.on_payload_gone = gone.append
    w._changed(WatchEvent("put", K.payload("job:j:3"), "x", 7))
    w._changed(WatchEvent("delete", K.payload("job:j:3"), "", 8))
    w._changed(WatchEvent("delete", K.member("n2"), "", 9))
    assert gone == [K.payload("job:j:3")] and woken == [now["t"]], (gone, woken)
