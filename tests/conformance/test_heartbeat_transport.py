"""ONE conformance suite for the heartbeat transport, run on real UDP sockets
(two loopback links, 127.0.0.1 and 127.0.0.2) and on the in-memory network
simulations use, so the fake cannot drift from the real thing."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from vigil.errors import WireError
from vigil.identity import KeyRing, SigningKeys, generate
from vigil.net.pacer import Pacer
from vigil.net.transport import HeartbeatReceiver, HeartbeatTransport
from vigil.net.wire import Heartbeat, encode
from vigil.procs import free_ports
from vigil.realtime import RealtimeSettings
from vigil.testing.memory_network import MemoryNetwork
from vigil.testing.wait import wait_until

SIGNERS = {n: SigningKeys(n, 1, {1: generate()}) for n in ("a", "b", "c")}
RING = KeyRing({n: {1: sk.keys[1].public_key()} for n, sk in SIGNERS.items()})
LINKS = ["127.0.0.1", "127.0.0.2"]


class Node:
    """One transport with its receiver; what it delivered, in order."""

    def __init__(self, network, me: str, port: int, peers: dict[str, int], bind=LINKS, sources=LINKS):
        self.got: list[tuple[Heartbeat, str, str]] = []
        self.arrivals: list[float | None] = []  # when the heartbeat thread took each (pacer only)
        self.arrived = asyncio.Event()
        self.receiver = HeartbeatReceiver("conf", me, RING, {p: set(sources) for p in peers}, time.time)
        links = {p: [(a, port_) for a in bind] for p, port_ in peers.items()}
        self.transport = HeartbeatTransport(self.receiver, list(bind), port, links, self._deliver,
                                            SIGNERS[me], network=network)

    def _deliver(self, hb: Heartbeat, link: str, verdict: str, at: float | None = None) -> None:
        self.got.append((hb, link, verdict))
        self.arrivals.append(at)
        self.arrived.set()

    async def wait(self, n: int) -> None:
        async def enough() -> None:
            while len(self.got) < n:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), 5)


@pytest.fixture(params=["udp", "memory", "pacer"])
def network(request):
    """The event loop's UDP, the simulations' in-memory network, and UDP read by
    the heartbeat thread (vigil.net.pacer, at normal priority here)."""
    if request.param != "pacer":
        yield None if request.param == "udp" else MemoryNetwork()
        return
    pacer = Pacer(time.monotonic, RealtimeSettings(priority=0, lock_memory=False))
    pacer.start()
    yield pacer
    pacer.stop()


def beat(node: str, seq: int, **kw) -> Heartbeat:
    return Heartbeat("conf", node, 7, seq, int(time.time() * 1e6), "healthy", "standby", **kw)


async def test_a_heartbeat_arrives_once_per_link_first_accepted_then_duplicate(network):
    pa, pb = free_ports(2)
    a, b = Node(network, "a", pa, {"b": pb}), Node(network, "b", pb, {"a": pa})
    await a.transport.start()
    await b.transport.start()
    try:
        sent = beat("a", 1, suspects=("c",), extra=True)
        t0 = time.monotonic()
        a.transport.send(sent)
        await b.wait(2)
        if isinstance(network, Pacer):  # stamped on the heartbeat thread as each arrived
            assert all(t0 <= at <= time.monotonic() for at in b.arrivals), b.arrivals
        assert [v for _, _, v in b.got] == ["accepted", "duplicate"]
        assert {link for _, link, _ in b.got} == set(LINKS), "each copy names the link it came on"
        assert b.got[0][0] == sent and a.transport.sent == 2
    finally:
        a.transport.close()
        b.transport.close()


async def test_only_authentic_packets_from_the_nodes_own_addresses_are_delivered(network):
    pa, pb, pc = free_ports(3)
    b = Node(network, "b", pb, {"a": pa, "c": pc}, sources=["127.0.0.1"])
    c = Node(network, "c", pc, {"b": pb}, bind=["127.0.0.2"])  # b accepts c only from 127.0.0.1
    forger = Node(network, "a", pa, {"b": pb}, bind=["127.0.0.1"])
    forger.transport.signer = SIGNERS["c"]  # a packet naming a, signed with c's key
    for n in (b, c, forger):
        await n.transport.start()
    try:
        c.transport.send(beat("c", 1))
        forger.transport.send(beat("a", 1))
        await wait_until(lambda: b.receiver.counters["wrong_source"] == 1 and b.receiver.counters["forged"] == 1,
                         5, "the wrong-source and forged packets counted")
        assert b.got == []
    finally:
        for n in (b, c, forger):
            n.transport.close()


async def test_a_taken_port_is_a_bind_error_naming_it(network):
    pa, pb = free_ports(2)
    a, again = Node(network, "a", pa, {"b": pb}), Node(network, "a", pa, {"b": pb})
    await a.transport.start()
    try:
        with pytest.raises(WireError) as e:
            await again.transport.start()
        assert e.value.reason == "bind" and f"127.0.0.1:{pa}" in str(e.value)
    finally:
        a.transport.close()


async def test_sending_before_start_after_close_or_to_nobody_is_silent(network):
    pa, pb, nobody = free_ports(3)
    a, b = Node(network, "a", pa, {"b": pb, "c": nobody}), Node(network, "b", pb, {"a": pa})
    a.transport.send(beat("a", 1))  # not started: a no-op
    await a.transport.start()
    await b.transport.start()
    try:
        a.transport.send(beat("a", 2))  # c is bound nowhere: dropped, no error
        await b.wait(2)
        assert [hb.seq for hb, _, _ in b.got] == [2, 2] and a.transport.send_errors == 0
        b.transport.close()
        a.transport.send(beat("a", 3))  # b closed: nothing arrives, nothing raises
    finally:
        a.transport.close()
    a.transport.send(beat("a", 4))  # closed: a no-op
    assert [hb.seq for hb, _, _ in b.got] == [2, 2]


async def test_garbage_is_counted_by_reason_and_never_delivered(network):
    pa, pb = free_ports(2)
    b = Node(network, "b", pb, {"a": pa})
    await b.transport.start()
    if network is None:
        raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        raw.bind(("127.0.0.1", pa))
        send = raw.sendto
    else:
        raw, _ = await network.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", pa))
        send = raw.sendto
    try:
        send(b"VGHB\x02", ("127.0.0.1", pb))
        packet = encode(beat("a", 1), SIGNERS["a"])
        send(packet[:-1] + bytes([packet[-1] ^ 1]), ("127.0.0.1", pb))  # one signature bit flipped
        await wait_until(lambda: b.receiver.counters["truncated"] == 1 and b.receiver.counters["forged"] == 1,
                         5, "the truncated and forged packets counted")
        assert b.got == []
    finally:
        raw.close()
        b.transport.close()
