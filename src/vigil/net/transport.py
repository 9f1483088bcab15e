"""UDP heartbeat transport: one socket per local link, sends to every link
of every peer, and a receiver that authenticates, de-duplicates and counts.

Contract:
- `HeartbeatReceiver.receive` never raises: every packet is either delivered
  ("accepted"), reported as an authentic duplicate ("duplicate": its link
  works, but the detector is not fed twice) or dropped and counted.
- A packet is delivered only if it is signed by the node it names with a key
  in the ring, comes from one of that node's addresses, and was sent within
  `max_skew` seconds of the receiver's wall clock (so packets captured
  earlier cannot be replayed after a restart cleared the replay windows:
  the nodes' clocks must be synchronised, e.g. by chrony, within it).
- Send errors (EPERM from a local firewall, ENETUNREACH while a link is
  down) are counted in `send_errors` and never stop the sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any, Callable

from vigil.errors import WireError
from vigil.identity import KeyRing, SigningKeys
from vigil.net.wire import Heartbeat, ReplayGuard, decode, encode

log = logging.getLogger(__name__)

Delivery = Callable[[Heartbeat, str, str], None]  # (heartbeat, link, verdict)
DEFAULT_MAX_SKEW = 2.0


class HeartbeatReceiver:
    """Authenticates and de-duplicates packets; counts every rejection by reason.

    `peers` maps each peer to the addresses its packets may come from;
    `ring` may be replaced at any time (a key reload)."""

    def __init__(self, cluster: str, me: str, ring: KeyRing, peers: dict[str, set[str]],
                 wall: Callable[[], float], max_skew: float = DEFAULT_MAX_SKEW):
        self.cluster, self.me, self.ring, self.wall, self.max_skew = cluster, me, ring, wall, max_skew
        self.guards: dict[str, ReplayGuard] = {}
        self.sources: dict[str, frozenset[str]] = {}
        for p, addrs in peers.items():
            self.track(p, addrs)
        self.counters: Counter[str] = Counter()
        self.skew: dict[str, float] = {}  # node -> last authentic packet's send time minus ours

    def track(self, peer: str, addresses: set[str]) -> None:
        """Accept `peer`'s packets from `addresses` from now on."""
        self.guards.setdefault(peer, ReplayGuard())
        self.sources[peer] = frozenset(addresses)

    def receive(self, packet: bytes, source: str) -> tuple[str, Heartbeat | None]:
        try:
            hb = decode(packet, self.ring, self.cluster)
        except WireError as e:
            self.counters[e.reason] += 1
            return e.reason, None
        verdict = self._judge(hb, source)
        self.counters[verdict] += 1
        return verdict, hb

    def _judge(self, hb: Heartbeat, source: str) -> str:
        if hb.node == self.me:
            return "self"
        if hb.node not in self.guards:
            return "unknown_node"
        if source not in self.sources[hb.node]:
            return "wrong_source"
        skew = hb.sent_us / 1e6 - self.wall()
        self.skew[hb.node] = skew
        if abs(skew) > self.max_skew:
            if self.counters["stale"] % 100 == 0:  # a clock problem, not an attack: say it, rarely
                log.warning("heartbeat from %s sent %.3f s from our clock (window %.1f s): check "
                            "time synchronisation (chrony) on both nodes", hb.node, skew, self.max_skew)
            return "stale"
        return self.guards[hb.node].check(hb.incarnation, hb.seq)


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
                 peer_links: dict[str, list[tuple[str, int]]], deliver: Delivery,
                 signer: SigningKeys | None = None, network: Any = None):
        """`network`: where datagram endpoints come from: the running loop (UDP) by
        default, or anything with its `create_datagram_endpoint` (an in-memory
        network for simulations, vigil.testing.memory_network)."""
        self.receiver, self.bind, self.port, self.signer = receiver, bind, port, signer
        self.peer_links, self.deliver, self.network = peer_links, deliver, network
        self._transports: list[asyncio.DatagramTransport] = []
        self.sent = 0
        self.send_errors = 0

    async def start(self) -> None:
        endpoints = self.network or asyncio.get_running_loop()
        for addr in self.bind:
            try:
                tr, _ = await endpoints.create_datagram_endpoint(
                    lambda a=addr: _Protocol(self, a), local_addr=(addr, self.port))
            except OSError as e:
                self.close()
                raise WireError("bind", f"cannot bind UDP {addr}:{self.port}: {e.strerror}; "
                                "is another agent running or the port taken?") from None
            self._transports.append(tr)

    def send(self, hb: Heartbeat) -> None:
        """Send to every peer on every link; a no-op before start and after
        close, and for a receive-only transport (a router's)."""
        if not self._transports or self.signer is None:
            return
        packet = encode(hb, self.signer)
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
        verdict, hb = self.receiver.receive(data, addr[0])
        if hb is not None and verdict in ("accepted", "duplicate"):
            self.deliver(hb, addr[0], verdict)
