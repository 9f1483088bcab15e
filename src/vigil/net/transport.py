"""UDP heartbeat transport: one socket per local link, sends to every link
of every peer, and a receiver that authenticates, de-duplicates and counts.

Contract:
- `HeartbeatReceiver.receive` never raises: every packet is either delivered
  ("accepted"), reported as an authentic duplicate ("duplicate": its link
  works, but the detector is not fed twice) or dropped and counted under
  one reason (vigil.net.wire.REJECT_REASONS).
- A packet is delivered only if it is signed by the node it names with a key
  in the ring, comes from one of that node's addresses, and its (incarnation,
  sequence) is new (vigil.net.wire.ReplayGuard).
- Cheap checks first: the header is parsed and the node, the source address
  and the sequence number are judged before the Ed25519 signature (~60 µs).
  What still needs a verification is bounded per source address
  (vigil.net.admit), in buckets kept apart for the incarnation we hold, the
  one the node's member record names (`expect`) and anything else, where an
  (incarnation, sequence) whose packet once failed its check also pays: a
  blind flood costs a parse per packet, not a verify, and cannot starve the
  peer's own packets, not even its first after either side restarts. Only
  verified packets move the replay window.
- The send time is not a liveness condition. A packet sent more than
  `max_skew` seconds from our wall clock is refused ("stale") only when it
  does not advance the replay window of an incarnation we already hold: the
  first we hear of a node since we started, or of a new incarnation of it,
  or a gap filled behind the highest sequence number. There the send time is
  what keeps a packet captured earlier from being replayed. Every packet
  that advances a known incarnation is one its sender signed after the last
  one we verified, so an authentic packet from a node whose clock stepped is
  delivered like any other (a clock step is an alarm, `skewed`, never a
  suspicion or a fence) and counted in `counters["skewed"]` as well.
- Send errors (EPERM from a local firewall, ENETUNREACH while a link is
  down) are counted in `send_errors` and never stop the sender.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from typing import Callable, Protocol

from vigil.errors import WireError
from vigil.identity import KeyRing, PairKeys, SigningKeys
from vigil.net.admit import EXPECTED, FAR, NEAR, FailedClaims, VerifyBudget
from vigil.net.wire import Heartbeat, ReplayGuard, Unverified, encode, mac_body, parse, seal

log = logging.getLogger(__name__)

# (heartbeat, link, verdict, arrival): arrival is when the heartbeat thread took the
# datagram (vigil.net.pacer), None when it came through the event loop (now, then).
Delivery = Callable[[Heartbeat, str, str, "float | None"], None]
Outgoing = tuple[bytes, int, tuple[str, int], bool]  # (packet, local link, destination, sealed)
# A datagram's source: (host, port) from an IPv4 socket, (host, port, flowinfo, scope_id)
# from an IPv6 one. The host is always a str on the INET sockets a transport binds.
Source = tuple[str, int] | tuple[str, int, int, int]
DEFAULT_MAX_SKEW = 2.0
DEFAULT_INTERVAL = 0.1  # the senders' heartbeat interval (vigil.core.timing.Timing)
RECENT = 8  # verified packets remembered per node: a copy of one is a duplicate without a verify


class HeartbeatReceiver:
    """Authenticates and de-duplicates packets; counts every rejection by reason.

    `peers` maps each peer to the addresses its packets may come from;
    `ring` may be replaced at any time (a key reload). `wall` is Unix time
    (send-time skew), `monotonic` paces the verification budget. `skewed`
    names the nodes whose clocks are off by more than `max_skew` now (set
    past `max_skew`, cleared below half of it): the clock_skew alarm."""

    def __init__(self, cluster: str, me: str, ring: KeyRing, peers: dict[str, set[str]],
                 wall: Callable[[], float], max_skew: float = DEFAULT_MAX_SKEW,
                 monotonic: Callable[[], float] = time.monotonic, interval: float = DEFAULT_INTERVAL):
        self.cluster, self.me, self.ring, self.wall, self.max_skew = cluster, me, ring, wall, max_skew
        self.monotonic, self.budget, self.failed = monotonic, VerifyBudget(interval), FailedClaims()
        self.pairs: PairKeys | None = None  # our pair keys (version 4 packets); None: a router
        self.expected: dict[str, int] = {}  # node -> the incarnation its member record names
        self.guards: dict[str, ReplayGuard] = {}
        self.sources: dict[str, frozenset[str]] = {}
        self._recent: dict[str, dict[tuple[int, int], bytes]] = {}
        self._copies: dict[bytes, Heartbeat] = {}  # every packet in _recent: its heartbeat
        self._verified_at: dict[str, float] = {}
        for p, addrs in peers.items():
            self.track(p, addrs)
        self.counters: Counter[str] = Counter()
        self.skew: dict[str, float] = {}  # node -> last authentic packet's send time minus ours
        self.skewed: dict[str, float] = {}  # node -> its skew, while beyond max_skew

    def track(self, peer: str, addresses: set[str]) -> None:
        """Accept `peer`'s packets from `addresses` from now on."""
        self.guards.setdefault(peer, ReplayGuard())
        self._recent.setdefault(peer, {})
        self.sources[peer] = frozenset(addresses)

    def expect(self, peer: str, incarnation: int) -> None:
        """`peer`'s member record names `incarnation`: its packets get a budget of
        their own until we hold that incarnation (vigil.net.admit). Only the node
        writes its record, so the hint is trusted; 0 (none named) and untracked
        peers are ignored."""
        if peer in self.guards and isinstance(incarnation, int) and incarnation > 0:
            self.expected[peer] = incarnation

    def untrack(self, peer: str) -> None:
        """Forget `peer` (the router drops a member name whose record went): its
        packets are `unknown_node` again until it is tracked anew."""
        for packet in self._recent.get(peer, {}).values():
            self._copies.pop(packet, None)
        for held in (self.guards, self.sources, self._recent, self._verified_at, self.skew, self.skewed,
                     self.expected):
            held.pop(peer, None)
        self.failed.forget(peer)

    def receive(self, packet: bytes, source: str) -> tuple[str, Heartbeat | None]:
        try:
            verdict, hb = self._receive(packet, source)
        except WireError as e:
            verdict, hb = e.reason, None
        self.counters[verdict] += 1
        return verdict, hb

    def _receive(self, packet: bytes, source: str) -> tuple[str, Heartbeat | None]:
        """The cheap checks, then at most one signature check. Raises WireError."""
        copy = self._copies.get(packet)
        if copy is not None and source in self.sources.get(copy.node, ()) and \
                self.guards[copy.node].peek(copy.incarnation, copy.seq) == "duplicate":
            return "duplicate", copy  # byte for byte a packet we verified (the second copy): no parse
        u = parse(packet, self.cluster)
        node, inc, seq = u.hb.node, u.hb.incarnation, u.hb.seq
        if node == self.me:
            return "self", None
        if node not in self.guards:
            return "unknown_node", None
        if source not in self.sources[node]:
            return "wrong_source", None
        guard = self.guards[node]
        expect = guard.peek(inc, seq)
        if expect == "replayed":
            return "replayed", None
        if expect == "duplicate" and self._recent[node].get((inc, seq)) == packet:
            return "duplicate", u.hb  # byte for byte a packet we verified: its second link works
        now = self.monotonic()
        if not self.budget.allow((source, node), self._kind(node, guard, inc, seq, now), now):
            return "rate_limited", None
        try:
            hb = u.verify(self.ring, self.pairs)
        except WireError as e:
            if e.reason == "forged":
                self.failed.add(node, inc, seq)
            raise
        if self._skewed(hb) and not (inc == guard.incarnation and seq > guard.highest):
            return "stale", None  # it would start a replay window, or fill a gap in one
        verdict = guard.check(inc, seq)
        self._remember(node, u, packet, now)
        return verdict, hb

    def _kind(self, node: str, guard: ReplayGuard, inc: int, seq: int, now: float) -> str:
        """Which bucket pays: NEAR in the incarnation we hold, no further ahead than
        the node can have sent; EXPECTED in the one its member record names (an
        older one never gets here: peek calls it replayed); else FAR, and FAR for
        a claim that failed its check before, so repeating it drains no other."""
        if (node, inc, seq) in self.failed:
            return FAR
        if inc == guard.incarnation:
            limit = self.budget.near_limit(guard.highest, now - self._verified_at.get(node, now))
            return NEAR if seq <= limit else FAR
        return EXPECTED if inc == self.expected.get(node) else FAR

    def _remember(self, node: str, u: Unverified, packet: bytes, now: float) -> None:
        recent = self._recent[node]
        recent[(u.hb.incarnation, u.hb.seq)] = packet
        self._copies[packet] = u.hb
        if len(recent) > RECENT:
            self._copies.pop(recent.pop(next(iter(recent))), None)
        self._verified_at[node] = now

    def _skewed(self, hb: Heartbeat) -> bool:
        """Note an authentic packet's send-time skew; True if beyond `max_skew`."""
        skew = hb.sent_us / 1e6 - self.wall()
        self.skew[hb.node] = skew
        if abs(skew) <= self.max_skew:
            if abs(skew) <= self.max_skew / 2:
                self.skewed.pop(hb.node, None)
            return False
        if self.counters["skewed"] % 100 == 0:  # a clock problem, not an attack: say it, rarely
            log.warning("heartbeat from %s sent %.3f s from our clock (window %.1f s): an alarm, not "
                        "a suspicion; check time synchronisation (chrony) on both nodes",
                        hb.node, skew, self.max_skew)
        self.counters["skewed"] += 1
        self.skewed[hb.node] = skew
        return True


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "HeartbeatTransport", local: str):
        self.owner, self.local = owner, local

    def datagram_received(self, data: bytes, addr: Source) -> None:
        self.owner._on_datagram(data, addr, None)

    def datagram_received_at(self, data: bytes, addr: Source, at: float) -> None:
        """A datagram stamped on arrival (`at`, the receiver's monotonic clock) by the
        heartbeat thread (vigil.net.pacer)."""
        self.owner._on_datagram(data, addr, at)

    def error_received(self, exc: Exception) -> None:
        self.owner.send_errors += 1


class DatagramEndpoint(Protocol):
    """What a HeartbeatTransport uses of a bound endpoint's transport: asyncio's
    DatagramTransport, vigil.net.pacer.PacedTransport and the in-memory one all fit."""

    def sendto(self, data: bytes, addr: tuple[str, int], /) -> None: ...

    def close(self) -> None: ...


class DatagramNetwork(Protocol):
    """The datagram port: where a transport's UDP endpoints come from. The running
    loop is one (real sockets), and so are the heartbeat thread (vigil.net.pacer)
    and the simulations' in-memory network (vigil.testing.memory_network)."""

    async def create_datagram_endpoint(self, factory: Callable[[], asyncio.DatagramProtocol], /,
                                       local_addr: tuple[str, int]
                                       ) -> tuple[DatagramEndpoint, asyncio.DatagramProtocol]: ...


class HeartbeatTransport:
    """Sends our heartbeats on every link and delivers peers' heartbeats."""

    def __init__(self, receiver: HeartbeatReceiver, bind: list[str], port: int,
                 peer_links: dict[str, list[tuple[str, int]]], deliver: Delivery,
                 signer: SigningKeys | None = None, network: DatagramNetwork | None = None):
        """`network`: where datagram endpoints come from: the running loop (UDP) by
        default, or anything with its `create_datagram_endpoint` (an in-memory
        network for simulations, vigil.testing.memory_network)."""
        self.receiver, self.bind, self.port, self.signer = receiver, bind, port, signer
        self.peer_links, self.deliver, self.network = peer_links, deliver, network
        # Peers whose current key id we know (their member records): they get version 4
        # packets under our pair key; everyone else (routers) the signed version 2/3.
        self.peer_ids: dict[str, int] = {}
        self._transports: list[DatagramEndpoint] = []
        self.sent = 0
        self.sealed = 0  # of `sent`: under a pair key (version 4)
        self.send_errors = 0

    async def start(self) -> None:
        endpoints: DatagramNetwork = self.network or asyncio.get_running_loop()
        for addr in self.bind:
            try:
                tr, _ = await endpoints.create_datagram_endpoint(
                    functools.partial(_Protocol, self, addr), local_addr=(addr, self.port))
            except OSError as e:
                self.close()
                raise WireError("bind", f"cannot bind UDP {addr}:{self.port}: {e.strerror}; "
                                "is another agent running or the port taken?") from None
            self._transports.append(tr)

    def send(self, hb: Heartbeat, skip: frozenset[str] = frozenset()) -> list[Outgoing]:
        """Send to every peer but those in `skip` on every link; returns what went
        out, for `resend` to send the heartbeat's copies without making the packets
        again. A no-op (returning []) before start and after close, and for a
        receive-only transport (a router's)."""
        if not self._transports or self.signer is None:
            return []
        signed: bytes | None = None
        body = mac_body(hb, self.signer.send) if self.peer_ids and self.receiver.pairs else b""
        batch = []
        for name, links in self.peer_links.items():
            if name in skip:
                continue
            packet = self._sealed(body, name)
            sealed = packet is not None
            if packet is None:
                signed = signed or encode(hb, self.signer)
                packet = signed
            # Link i leaves through local address i, so two links use two paths.
            batch += [(packet, i, dest, sealed) for i, dest in enumerate(links)]
        self.resend(batch)
        return batch

    def resend(self, batch: list[Outgoing]) -> None:
        """Send packets `send` made (a heartbeat's next copy); a no-op after close."""
        for packet, i, dest, sealed in batch:
            if not self._transports:
                return
            try:
                self._transports[min(i, len(self._transports) - 1)].sendto(packet, dest)
                self.sent += 1
                self.sealed += sealed
            except OSError:
                self.send_errors += 1

    def _sealed(self, body: bytes, peer: str) -> bytes | None:
        """A version 4 packet for `peer`, or None (no pair key for it: sign instead)."""
        peer_id, pairs = self.peer_ids.get(peer), self.receiver.pairs
        if not body or peer_id is None or pairs is None or self.signer is None:
            return None
        try:
            return seal(body, pairs.key(self.signer.send, peer, peer_id), peer_id, peer)
        except WireError:  # a ring without that key: it cannot check our MAC either
            return None

    def close(self) -> None:
        for tr in self._transports:
            tr.close()
        self._transports.clear()

    def _on_datagram(self, data: bytes, addr: Source, at: float | None) -> None:
        verdict, hb = self.receiver.receive(data, addr[0])
        if hb is not None and verdict in ("accepted", "duplicate"):
            self.deliver(hb, addr[0], verdict, at)
