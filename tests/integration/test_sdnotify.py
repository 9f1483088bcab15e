"""Issue 23 #2: the agent speaks systemd's notify protocol (vigil.agent.sdnotify).
A real datagram socket stands for systemd's NOTIFY_SOCKET and two real agents
run on a real etcd: READY=1 once the session is held and the peer heard,
STATUS= with the role, WATCHDOG=1 while the decision loop and the role guard
run and none once one of them has died, STOPPING=1 at a graceful stop. The
hung-process case (SIGSTOP, systemd kills and restarts) is the three-machine
test's (tests/system/test_deploy_machines.py)."""

from __future__ import annotations

import asyncio
import socket
import time

from tests.integration.agentharness import agents_running
from vigil.agent.sdnotify import NO_ETCD_WAIT, READY_WAIT, Notifier, ready_for_service
from vigil.testing.keys import shared_keys
from vigil.testing.wait import wait_until

NODES = ("n1", "n2")
KEYS = shared_keys(*NODES)


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: every datagram, parsed, with its arrival time."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.got: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.got
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.got.append((time.monotonic(), fields))

    def has(self, key: str, since: float = 0.0) -> list[dict[str, str]]:
        return [f for t, f in self.drain() if key in f and t >= since]


def test_notify_socket_and_watchdog_variables_are_read_as_systemd_sets_them():
    n = Notifier({"NOTIFY_SOCKET": "@vigil-test", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, pid=42)
    assert n.enabled and n.address == "\0vigil-test" and n.watchdog == 10.0
    assert Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "7"}, pid=42).watchdog is None
    assert Notifier({"WATCHDOG_USEC": "bogus"}, pid=1).watchdog is None
    off = Notifier({}, pid=1)
    assert not off.enabled and off.send(READY=1) is False
    assert Notifier({"NOTIFY_SOCKET": "/nonexistent/sock"}, pid=1).send(READY=1) is False  # never raises


def test_ready_comes_without_etcd_after_a_while_so_systemd_never_restarts_a_serving_node():
    class Peers:
        @staticmethod
        def unheard():
            return {"n2"}

    class NoSession:  # an agent whose etcd is away
        registration = type("R", (), {"opened_at": None})
        heartbeats = type("H", (), {"peers": Peers})

        @staticmethod
        def session_ok():
            return False
    assert ready_for_service(NoSession, READY_WAIT, running_for=NO_ETCD_WAIT - 1) is None
    assert ready_for_service(NoSession, READY_WAIT, running_for=NO_ETCD_WAIT) == ["n2"]


async def test_ready_status_watchdog_and_stopping_reach_systemd(tmp_path, etcd_cluster, monkeypatch):
    systemd = FakeSystemd(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # fed every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    async with agents_running(tmp_path, "sdnotify", NODES, KEYS,
                              lambda node: {"endpoints": etcd_cluster.endpoints}) as agents:
        ready = await wait_until(lambda: len(systemd.has("READY")) >= 2 and systemd.has("READY"), 30,
                                 "READY=1 from both agents")
        assert all("not heard yet" not in r["STATUS"] for r in ready), "both peers were heard before READY"
        leader = await wait_until(lambda: next((a for a in agents if a.is_leader()), None), 30, "a leader")
        await wait_until(lambda: [s for s in systemd.has("STATUS") if s["STATUS"].startswith("leader (token")],
                         30, "a STATUS line naming the leader and its token")
        t0 = time.monotonic()
        await wait_until(lambda: len(systemd.has("WATCHDOG", t0)) >= 6, 10, "WATCHDOG=1 fed by both agents")
        for a in agents:  # the decision loop dies: nobody feeds systemd's watchdog any more
            a._vital[0].cancel()
        await asyncio.sleep(0)
        t1 = time.monotonic() + 0.2  # a keep-alive already under way may still arrive
        await asyncio.sleep(1.0)
        assert systemd.has("WATCHDOG", t1) == [], "a dead decision loop must starve the watchdog"
        assert not any(a.alive() for a in agents) and leader is not None
    assert systemd.has("STOPPING"), "a graceful stop says STOPPING=1"
