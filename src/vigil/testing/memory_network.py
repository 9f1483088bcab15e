"""An in-memory datagram network with asyncio's endpoint API, so a
HeartbeatTransport runs unchanged on it (vigil.net.transport, `network=`).

Contract (held to the UDP one by tests/conformance/test_heartbeat_transport.py):
- `create_datagram_endpoint(factory, local_addr=(addr, port))` binds one
  endpoint; binding a taken (addr, port) raises OSError(EADDRINUSE), as UDP.
- `transport.sendto(data, (addr, port))` delivers a copy to the endpoint
  bound there on a later loop iteration (never synchronously), with the
  sender's address as the source; nothing bound there, or a cut link, drops
  the datagram silently, as UDP does. A closed transport sends nothing.
- A datagram is delivered in the context its endpoint was bound in, so on a
  simulated process (vigil.testing.sim_loop) it waits while that process is
  stopped, as it waits in a stopped process's socket buffer.
- Faults for simulations: `cut(a, b)` drops every datagram between two
  addresses (both ways) until `heal()`; `loss` drops that fraction at random
  (seeded `rng`); `latency` delays each delivery; `close_host(addr)` closes
  every endpoint bound on an address (the kernel closing a killed process's
  sockets).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import random
from typing import Callable

Address = tuple[str, int]


class MemoryDatagramTransport(asyncio.DatagramTransport):
    def __init__(self, network: "MemoryNetwork", local: Address, protocol: asyncio.DatagramProtocol):
        super().__init__()
        self.network, self.local, self.protocol = network, local, protocol
        self.context = contextvars.copy_context()
        self._closed = False

    def sendto(self, data: bytes, addr: Address | None = None) -> None:  # type: ignore[override]
        if not self._closed and addr is not None:
            self.network._send(self.local, (addr[0], int(addr[1])), bytes(data))

    def get_extra_info(self, name: str, default=None):
        return self.local if name == "sockname" else default

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.network._unbind(self.local)
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)


class MemoryNetwork:
    def __init__(self, latency: float = 0.0, loss: float = 0.0, rng: random.Random | None = None):
        self.latency, self.loss, self.rng = latency, loss, rng or random.Random(0)
        self._bound: dict[Address, MemoryDatagramTransport] = {}
        self._cut: set[frozenset[str]] = set()
        self.delivered = self.dropped = 0

    async def create_datagram_endpoint(self, factory: Callable[[], asyncio.DatagramProtocol],
                                       local_addr: Address) -> tuple[MemoryDatagramTransport,
                                                                     asyncio.DatagramProtocol]:
        local = (local_addr[0], int(local_addr[1]))
        if local in self._bound:
            raise OSError(errno.EADDRINUSE, "Address already in use")
        protocol = factory()
        transport = MemoryDatagramTransport(self, local, protocol)
        self._bound[local] = transport
        protocol.connection_made(transport)
        return transport, protocol

    def cut(self, a: str, b: str) -> None:
        self._cut.add(frozenset((a, b)))

    def heal(self) -> None:
        self._cut.clear()

    def close_host(self, addr: str) -> None:
        for local in [a for a in self._bound if a[0] == addr]:
            self._bound.pop(local)._closed = True

    def _unbind(self, local: Address) -> None:
        self._bound.pop(local, None)

    def _send(self, src: Address, dst: Address, data: bytes) -> None:
        if frozenset((src[0], dst[0])) in self._cut or (self.loss and self.rng.random() < self.loss):
            self.dropped += 1
            return
        target = self._bound.get(dst)
        if target is None:
            self.dropped += 1
            return
        loop = asyncio.get_running_loop()
        if self.latency:
            loop.call_later(self.latency, self._deliver, src, dst, data, context=target.context)
        else:
            loop.call_soon(self._deliver, src, dst, data, context=target.context)

    def _deliver(self, src: Address, dst: Address, data: bytes) -> None:
        target = self._bound.get(dst)
        if target is None or target.is_closing():
            self.dropped += 1
            return
        self.delivered += 1
        target.protocol.datagram_received(data, src)
