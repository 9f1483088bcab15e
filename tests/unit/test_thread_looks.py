"""The heartbeat thread hands the loop its detectors' looks (vigil.net.pacer
`look_at`, vigil.net.watch_loop `thread=`): a loop that runs late suspects a
silent peer as of the instant the thread saw its deadline pass, with nothing
forgiven, and judges first every datagram the thread stamped before that
instant. Without the thread, the same late loop suspects late (the control)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from types import SimpleNamespace

from vigil.core.detector import DetectorSettings
from vigil.core.peers import SUSPECT, PeerTable, PeerWatch
from vigil.net.pacer import QUEUED, Pacer
from vigil.net.watch_loop import WatchLoop
from vigil.realtime import RealtimeSettings
from vigil.procs import wait_for
from vigil.testing.wait import wait_until

SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it

NORMAL = RealtimeSettings(priority=0, lock_memory=False)
# The suite runs as root: the thread gets the product's priority, so a busy machine does not
# make it late (a thread at normal priority may be, and its lateness would rightly be forgiven).
FIFO = RealtimeSettings(priority=10, lock_memory=False)
HB = SimpleNamespace(node="b", incarnation=1, health="healthy", role="standby", suspects=(), extra=False)
BLOCK = 0.6  # s the loop is kept busy past the peer's deadline


async def suspected_while_the_loop_is_late(thread: Pacer | None) -> tuple[float, float, float]:
    """(when b's deadline was due, when b was suspected, the longest pause the watch forgave)."""
    watch = PeerWatch(PeerTable(["b"], DetectorSettings()))
    changes: list = []
    looking = WatchLoop(watch, time.monotonic, changes.extend, thread)
    if thread:
        thread.loop = asyncio.get_running_loop()
        thread.start()
    task = asyncio.create_task(looking.run())
    try:
        for _ in range(20):  # b's heartbeats every 100 ms, then silence
            watch.deliver(HB, "l", "accepted", time.monotonic(), stamped=thread is not None)
            looking.poke()
            await asyncio.sleep(0.1)
        due = watch.peers.peers["b"].detector.suspect_at()
        time.sleep(max(0.0, due - time.monotonic()) + BLOCK)  # the loop starved past the deadline
        found = await wait_until(lambda: [c for c in changes if c.new == SUSPECT], 10, "b suspected")
        return due, found[0].at, watch.guard.longest
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if thread:
            thread.stop()


def test_a_late_loop_suspects_at_the_instant_the_thread_saw_the_deadline():
    due, at, forgiven = asyncio.run(suspected_while_the_loop_is_late(Pacer(time.monotonic, FIFO)))
    assert due <= at < due + BLOCK / 3, (due, at)  # generous: the thread's wake, not the loop's
    assert forgiven < BLOCK / 3, "the loop's own lateness was not forgiven on the peer"


def test_without_the_thread_the_same_late_loop_suspects_late():
    due, at, forgiven = asyncio.run(suspected_while_the_loop_is_late(None))
    assert at >= due + BLOCK, (due, at)
    assert forgiven > 0.0, "its own lateness was forgiven on the peer first"


def test_a_look_comes_after_the_datagrams_stamped_before_it_and_repeats_while_the_loop_is_behind():
    async def main() -> list[tuple[str, float]]:
        p = Pacer(time.monotonic, NORMAL)
        seen: list[tuple[str, float]] = []

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received_at(self, data, addr, at):
                seen.append(("datagram", at))

        due = [time.monotonic() + 0.3]
        first_due = due[0]
        p.look_at(lambda: due[0], lambda at: seen.append(("look", at)))
        p.loop = asyncio.get_running_loop()
        p.start()
        try:
            t, _ = await p.create_datagram_endpoint(Protocol, ("127.0.0.1", 0))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"hb", t.get_extra_info("sockname"))
                time.sleep(max(0.0, due[0] - time.monotonic()) + 0.3)  # the loop takes nothing meanwhile
            await wait_until(lambda: [k for k, _ in seen if k == "look"], 10, "the look")
            due[0] = float("inf")  # the loop caught up: nothing due
            p.rearm()
            return first_due, list(seen)
        finally:
            p.stop()
    first_due, seen = asyncio.run(main())
    kinds, times = [k for k, _ in seen], [at for _, at in seen]
    assert kinds[0] == "datagram" and set(kinds[1:]) == {"look"} and len(kinds) >= 3, kinds
    assert times == sorted(times) and first_due <= times[1] < first_due + 0.1, (first_due, times)
    # While the loop took nothing, a look every LOOK_REPEAT (generous: the rate, not the jitter)
    gaps = [b - a for a, b in zip(times[1:], times[2:])]
    assert max(gaps) < 0.2, gaps


def thread_cpu(tid: int) -> float:
    fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_look_it_cannot_hand_does_not_spin_the_thread():
    """A due in the past with no loop to hand it to, then with the loop behind by
    QUEUED datagrams (the thread holds back): the thread sleeps, it does not spin."""
    loop = asyncio.new_event_loop()
    p = Pacer(time.monotonic, NORMAL)
    p.look_at(lambda: 0.0, lambda at: None)
    try:
        p.start()
        assert p.native_id is not None
        before = thread_cpu(p.native_id)
        t0 = time.monotonic()
        loop.run_until_complete(wait_until(lambda: time.monotonic() - t0 > 0.5, 10, "half a second"))
        assert thread_cpu(p.native_id) - before < 0.1, "no loop to hand the look to"

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received_at(self, data, addr, at):
                pass
        t, _ = loop.run_until_complete(p.create_datagram_endpoint(Protocol, ("127.0.0.1", 0)))
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            for _ in range(QUEUED + 500):
                flood.sendto(b"x", t.get_extra_info("sockname"))
        wait_for(lambda: p.held_back >= 1, 10, "the thread to stop reading: the loop is behind")
        before = thread_cpu(p.native_id)
        time_held = time.monotonic()
        wait_for(lambda: time.monotonic() - time_held > 0.5, 10, "half a second held back", poll=0.05)
        assert thread_cpu(p.native_id) - before < 0.1, "held back with a look due"
    finally:
        p.stop()
        loop.close()
