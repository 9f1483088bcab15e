"""UDP heartbeat transport: one socket per local link, sends to every link
of every peer, and a receiver that authenticates, de-duplicates and counts.

Contract:
- `HeartbeatReceiver.receive` never raises: every packet is either delivered
  ("accepted"), reported as an authentic duplicate ("duplicate": its link
  works, but the detector is not fed twice) or dropped and counted.
- Send errors (EPERM from a local firewall, ENETUNREACH while a link is
  down) are counted in `send_errors` and never stop the sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Callable

from vigil.errors import WireError
from vigil.net.wire import Heartbeat, ReplayGuard, decode, encode

log = logging.getLogger(__name__)

Delivery = Callable[[Heartbeat, str, str], None]  # (heartbeat, link, verdict)


class HeartbeatReceiver:
    """Authenticates and de-duplicates packets; counts every rejection by reason."""

    def __init__(self, cluster: str, me: str, key: bytes, peers: set[str]):
        self.cluster, self.me, self.key = cluster, me, key
        self.guards = {p: ReplayGuard() for p in peers}
        self.counters: Counter[str] = Counter()

    def receive(self, packet: bytes) -> tuple[str, Heartbeat | None]:
        try:
            hb = decode(packet, self.key, self.cluster)
        except WireError as e:
            self.counters[e.reason] += 1
            return e.reason, None
        if hb.node == self.me:
            verdict = "self"
        elif hb.node not in self.guards:
            verdict = "unknown_node"
        else:
            verdict = self.guards[hb.node].check(hb.incarnation, hb.seq)
        self.counters[verdict] += 1
        return verdict, hb


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "HeartbeatTransport", local: str):
        self.owner, self.local = owner, local

    def datagram_received(self, data: bytes, addr) -> None:
        self.owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.send_errors += 1


class HeartbeatTransport:
    """Sends our heartbeats on every link and delivers peers' heartbeats."""

    def __init__(self, receiver: HeartbeatReceiver, bind: list[str], port: int,
                 peer_links: dict[str, list[tuple[str, int]]], deliver: Delivery):
        self.receiver, self.bind, self.port = receiver, bind, port
        self.peer_links, self.deliver = peer_links, deliver
        self._transports: list[asyncio.DatagramTransport] = []
        self.sent = 0
        self.send_errors = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for addr in self.bind:
            try:
                tr, _ = await loop.create_datagram_endpoint(
                    lambda a=addr: _Protocol(self, a), local_addr=(addr, self.port))
            except OSError as e:
                self.close()
                raise WireError("bind", f"cannot bind UDP {addr}:{self.port}: {e.strerror}; "
                                "is another agent running or the port taken?") from None
            self._transports.append(tr)

    def send(self, hb: Heartbeat) -> None:
        """Send to every peer on every link; a no-op before start and after close."""
        if not self._transports:
            return
        packet = encode(hb, self.receiver.key)
        for links in self.peer_links.values():
            for i, dest in enumerate(links):
                # Link i leaves through local address i, so two links use two paths.
                tr = self._transports[min(i, len(self._transports) - 1)]
                try:
                    tr.sendto(packet, dest)
                    self.sent += 1
                except OSError:
                    self.send_errors += 1

    def close(self) -> None:
        for tr in self._transports:
            tr.close()
        self._transports.clear()

    def _on_datagram(self, data: bytes, addr) -> None:
        verdict, hb = self.receiver.receive(data)
        if hb is not None and verdict in ("accepted", "duplicate"):
            self.deliver(hb, addr[0], verdict)
