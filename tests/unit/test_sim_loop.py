"""SimLoop: asyncio on a FakeClock's time, with processes that can be
stopped, continued and killed as SIGSTOP, SIGCONT and SIGKILL do."""

from __future__ import annotations

import asyncio
import time

from vigil.testing.clock import FakeClock
from vigil.testing.memory_network import MemoryNetwork
from vigil.testing.sim_loop import SimLoop


def run(loop: SimLoop, coro):
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.reap()
        loop.close()


def test_an_hour_of_timers_passes_in_well_under_a_second():
    clock = FakeClock()
    loop = SimLoop(clock)
    start, t0 = clock.now(), time.perf_counter()

    async def main():
        await asyncio.wait_for(asyncio.sleep(3600), 7200)
        return clock.now()
    assert run(loop, main()) - start == 3600
    assert time.perf_counter() - t0 < 1.0


def test_a_stopped_process_runs_nothing_and_its_overdue_timer_fires_on_continue():
    clock = FakeClock()
    loop = SimLoop(clock)
    ticks: list[float] = []
    ticked = asyncio.Event()

    async def ticker():
        while True:
            await asyncio.sleep(1.0)
            ticks.append(clock.now())
            ticked.set()

    async def main():
        p = loop.spawn("p", ticker())
        await asyncio.sleep(2.5)
        loop.sigstop(p)
        await asyncio.sleep(10.0)
        assert len(ticks) == 2, ticks
        ticked.clear()
        resumed = clock.now()
        loop.sigcont(p)
        await asyncio.wait_for(ticked.wait(), 60)
        assert len(ticks) == 3 and ticks[2] == resumed, "the overdue tick fires at once"
        await asyncio.sleep(1.0)
        assert len(ticks) == 4
    run(loop, main())


def test_a_killed_process_runs_nothing_again_not_even_its_finally():
    clock = FakeClock()
    loop = SimLoop(clock)
    seen = []

    async def victim():
        try:
            while True:
                await asyncio.sleep(0.1)
                seen.append("tick")
        finally:
            seen.append("finally")

    async def main():
        p = loop.spawn("p", victim())
        await asyncio.sleep(0.35)
        loop.sigkill(p)
        await asyncio.sleep(5.0)
        return list(seen)
    assert run(loop, main()) == ["tick"] * 3


def test_a_datagram_to_a_stopped_process_waits_as_in_its_socket_buffer():
    clock = FakeClock()
    loop = SimLoop(clock)
    net = MemoryNetwork()
    got: list[tuple[bytes, float]] = []
    arrived = asyncio.Event()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.append((data, clock.now()))
            arrived.set()

    async def listener(bound: asyncio.Event):
        await net.create_datagram_endpoint(Receiver, local_addr=("10.231.9.2", 7400))
        bound.set()
        await asyncio.sleep(3600)

    async def main():
        bound = asyncio.Event()
        p = loop.spawn("receiver", listener(bound))
        await bound.wait()
        sender, _ = await net.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("10.231.9.1", 7400))
        loop.sigstop(p)
        sender.sendto(b"hb", ("10.231.9.2", 7400))
        await asyncio.sleep(2.0)
        assert got == []
        resumed = clock.now()
        loop.sigcont(p)
        await asyncio.wait_for(arrived.wait(), 60)
        assert got[0][1] == resumed, "delivered as the receiver runs again"
        return got
    got_at = run(loop, main())
    assert [d for d, _ in got_at] == [b"hb"] and got_at[0][1] >= 1002.0
