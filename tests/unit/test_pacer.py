"""The heartbeat thread (vigil.net.pacer) and the real-time settings it runs
with (vigil.realtime): fixed-rate timers, the role's deadline, callbacks
that fail, and what the kernel grants a thread (the suite runs as root)."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import resource
import socket
import threading
import time

import pytest

from vigil.config import parse_config
from vigil.errors import ConfigError
from vigil.net.pacer import BURST, QUEUED, Pacer
from vigil.realtime import RealtimeSettings, apply, problems
from vigil.testing.keys import shared_keys
from vigil.procs import wait_for
from vigil.testing.wait import wait_until

NORMAL = RealtimeSettings(priority=0, lock_memory=False)
SO_RCVBUFFORCE = 33  # <asm-generic/socket.h>; Python's socket module does not name it


@pytest.fixture
def pacer():
    p = Pacer(time.monotonic, NORMAL)
    p.start()
    yield p
    p.stop()


def test_every_runs_at_a_fixed_rate_and_call_later_once(pacer):
    ticks: list[float] = []
    once: list[float] = []
    pacer.every(0.05, lambda: ticks.append(time.monotonic()))
    pacer.call_later(0.1, lambda: once.append(time.monotonic()))
    wait_for(lambda: len(ticks) >= 10, 10, "ten ticks")
    assert len(once) == 1
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert 0.02 < sum(gaps) / len(gaps) < 0.2, gaps  # generous: the rate, not the jitter


def test_the_deadline_is_called_once_it_passed_and_not_before(pacer):
    deadline = [time.monotonic() + 0.3]
    called: list[float] = []

    def expired() -> None:
        called.append(time.monotonic())
        deadline[0] = None  # as a demoted role has no deadline

    pacer.guard(lambda: deadline[0], expired)
    due = deadline[0]
    wait_for(lambda: called, 10, "the deadline's callback")
    assert called[0] >= due and len(called) == 1


def test_a_failing_callback_is_counted_and_the_thread_goes_on(pacer):
    ran: list[int] = []

    def bad() -> None:
        raise RuntimeError("boom")

    pacer.call_later(0.0, bad)
    pacer.every(0.02, lambda: ran.append(1))
    wait_for(lambda: pacer.errors == 1 and len(ran) >= 3, 10, "the error counted, later timers run")


def test_a_flood_waits_in_the_kernel_not_in_memory_while_the_loop_is_behind():
    """The loop takes nothing (it does not run): the thread stops reading at QUEUED
    datagrams handed over; once the loop takes them, it reads again."""
    loop = asyncio.new_event_loop()
    p = Pacer(time.monotonic, NORMAL)
    got: list[bytes] = []

    class Protocol(asyncio.DatagramProtocol):
        def datagram_received_at(self, data, addr, at):
            got.append(data)

    try:
        p.start()
        t, _ = loop.run_until_complete(p.create_datagram_endpoint(Protocol, ("127.0.0.1", 0)))
        dest = t.get_extra_info("sockname")
        # Room for the whole flood in the kernel (root may exceed rmem_max): what is not read waits there.
        t.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            for i in range(QUEUED + 1000):
                flood.sendto(b"x", dest)
            wait_for(lambda: p.held_back >= 1, 10, "the thread to stop reading")
            assert QUEUED <= p._queued <= QUEUED + BURST and got == []
            loop.run_until_complete(wait_until(lambda: p._reading, 10, "the loop to take what was handed "
                                                                       "over, and the thread to read again"))
            flood.sendto(b"after", dest)
            loop.run_until_complete(wait_until(lambda: b"after" in got, 10, "the datagram sent after"))
        assert b"after" in got and p.errors == 0
    finally:
        p.stop()
        loop.close()


def test_the_thread_gets_sched_fifo_and_locked_memory_and_the_rest_of_the_process_does_not():
    assert os.geteuid() == 0, "the suite runs as root (scripts/test.sh)"
    p = Pacer(time.monotonic, RealtimeSettings(priority=10, lock_memory=True))
    try:
        applied = p.start()
        assert applied.policy == "SCHED_FIFO" and applied.priority == 10 and applied.memory_locked, applied
        assert os.sched_getscheduler(p.native_id) == os.SCHED_FIFO
        assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER  # this thread: unchanged
        locked_kb = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmLck")))
        assert locked_kb > 0
    finally:
        p.stop()
        ctypes.CDLL(None).munlockall()  # the test process, not an agent: give it back


def test_a_refused_priority_is_a_problem_naming_the_fix_not_an_error():
    """An agent that is not root (and has no CAP_SYS_NICE, CAP_IPC_LOCK) runs on:
    a child process drops to nobody and asks."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:  # no real-time or locking allowance, whatever this machine's limits are
            resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
            os.setgid(65534)
            os.setuid(65534)
            applied = apply(RealtimeSettings(priority=10, lock_memory=True))
            os.write(w, json.dumps(applied.describe()).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read())
    os.waitpid(pid, 0)
    assert got["policy"] == "SCHED_OTHER" and not got["memory_locked"], got
    assert "CAP_SYS_NICE" in got["problems"][0] and "CAP_IPC_LOCK" in got["problems"][1], got


@pytest.mark.parametrize("priority,lock,field", [(99, True, "priority"), (-1, True, "priority"),
                                                 (True, True, "priority"), ("10", True, "priority"),
                                                 (10, "yes", "lock_memory")])
def test_settings_out_of_range_name_the_field(priority, lock, field):
    assert [f for f, _, _ in problems(priority, lock)] == [field]
    with pytest.raises(ConfigError) as e:
        parse_config(config({"priority": priority, "lock_memory": lock}))
    assert e.value.field == f"heartbeat.realtime.{field}"


def test_realtime_is_off_unless_configured_and_defaults_to_fifo_10_with_memory_locked():
    assert parse_config(config(None)).realtime is None
    assert parse_config(config({})).realtime == RealtimeSettings(10, True)
    with pytest.raises(ConfigError) as e:
        parse_config(config({"priorty": 10}))
    assert "priorty" in str(e.value)


def config(realtime: dict | None) -> dict:
    hb = {**shared_keys("n1", "n2")["n1"], "peers": [{"name": "n2", "addresses": ["127.0.0.2"]}]}
    if realtime is not None:
        hb["realtime"] = realtime
    return {"cluster": "c", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:2379"]}, "heartbeat": hb}


async def test_the_heartbeat_thread_sends_on_time_but_withholds_beats_while_the_loop_is_hung():
    """Peers must not be told a hung agent is alive: after LOOP_STALE without the
    loop looking at its peers, the thread sends nothing until it looks again."""
    from vigil.agent.heartbeat import LOOP_STALE, HeartbeatService
    from vigil.clock import SystemClock
    from vigil.procs import free_ports

    mine, theirs = free_ports(2, socket.SOCK_DGRAM)
    hb = {**shared_keys("n1", "n2")["n1"], "port": mine, "realtime": {"priority": 0, "lock_memory": False},
          "peers": [{"name": "n2", "addresses": ["127.0.0.1"], "port": theirs}]}
    cfg = parse_config({"cluster": "c", "node": "n1", "etcd": {"endpoints": ["http://127.0.0.1:1"]}, "heartbeat": hb})
    arrivals: list[float] = []
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", theirs))
    peer.settimeout(0.2)
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                peer.recv(2048)
                arrivals.append(time.monotonic())
            except OSError:
                pass
    listener = threading.Thread(target=listen)
    listener.start()
    service = HeartbeatService(cfg, SystemClock(), 1, lambda changes: None, lambda: ("healthy", "standby"),
                               pacer=Pacer(time.monotonic, cfg.realtime))
    await service.start()
    try:
        await wait_until(lambda: len(arrivals) >= 4 and service.looking.looks >= 2, 10,
                         "heartbeats from the thread, and the loop looking at its peers")
        sent = service.transport.sent
        # The fault: the loop hangs in a blocking call until the thread has withheld beats.
        wait_for(lambda: service.withheld >= 3, LOOP_STALE + 10, "the thread to withhold beats")
        during = service.transport.sent - sent
        assert service.withheld >= 3, "withheld once the loop was hung"
        assert during >= 4, "sent while the loop was only late"
        assert service.withheld_since, "still withholding: the loop has not looked yet"
        await wait_until(lambda: not service.withheld_since and service.transport.sent > sent + during, 10,
                         "heartbeats again once the loop looks")
    finally:
        await service.stop()
        stop.set()
        listener.join()
        peer.close()
