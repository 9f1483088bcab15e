"""Heartbeat packets: a versioned binary format, signed by the sending node.

Layout (network byte order), versions 2 and 3:

    offset size  field
    0      4     magic b"VGHB"
    4      1     version (2, or 3 when it carries suspicions)
    5      1     flags: bit 0 set on a packet sent out of schedule (a role or
                 suspicion change); other bits reserved, 0
    6      1     len(cluster) C, 1..64
    7      1     len(node) N, 1..64
    8      8     incarnation (grows on every restart of the sender)
    16     8     sequence number (grows with every packet of one incarnation)
    24     8     send time, sender's wall clock in microseconds (the receiver's
                 send-time window refuses captured packets replayed later)
    32     1     health (0 unknown, 1 healthy, 2 degraded, 3 unhealthy)
    33     1     role (0 unknown, 1 standby, 2 leader)
    34     2     key id: which of the sender's keys signed it (vigil.identity)
    36     C     cluster name, UTF-8
    36+C   N     node name, UTF-8
    36+C+N       version 3 only: the peers the sender suspects now, one count
                 byte K (1..32), then K times a length byte L (1..64) and L bytes
                 of UTF-8 name
    ...    64    Ed25519 signature over every byte before it, by the named node's
                 key: a node can speak only for itself

A sender that suspects no one (the steady state) or too many to list sends
version 2, byte for byte what earlier agents send and accept; it sends
version 3 only while it suspects someone, so a peer learns a suspicion from
the very next packet, before the sender's member record reaches etcd
(vigil.core.view.ClusterView.corroborated). A version 2 packet says nothing
about suspicions (`suspects` None): receivers then read the member record.
During a rolling upgrade an agent that knows only version 2 drops (and
counts as `bad_version`) the packets of an upgraded peer for as long as
that peer suspects someone.

Version 4 is the same header, names and (when flag bit 1 is set) the
suspicion trailer, then the receiver's key id (2 bytes) and a 16-byte tag,
HMAC-SHA256 under the pair key of sender and receiver (vigil.identity
.PairKeys) over every byte before it and the receiver's name: one packet
per receiver, ~2 µs to check instead of ~100 µs. A sender uses it for a
peer whose current key id its member record names (`heartbeat.key_id`) and
signs version 2/3 for everyone else (routers, a peer not yet read).

Version 1 (HMAC with one shared cluster key) let any key holder speak for
any node and is no longer accepted.

`parse` reads a packet without checking its signature (what a receiver's
cheap checks need, vigil.net.transport); `decode` is `parse` and then the
signature check. Neither raises anything but `WireError`, whose `reason` is
one of REJECT_REASONS: every rejected packet lands in exactly one counter.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from vigil.errors import WireError
from vigil.identity import SIG_LEN, KeyRing, PairKeys, SigningKeys

MAGIC = b"VGHB"
VERSION = 2
VERSION_SUSPECTS = 3
VERSION_MAC = 4
FLAG_EXTRA = 0x01
FLAG_SUSPECTS = 0x02  # version 4: a suspicion trailer follows the names
MAC_LEN = 16
_PEER_ID = struct.Struct("!H")
MAX_SUSPECTS = 32  # listed in one packet; more, and the member record alone says them
_HEADER = struct.Struct("!4sBBBBQQQBBH")
MIN_LEN = _HEADER.size + 2 + _PEER_ID.size + MAC_LEN  # the shortest: version 4
MAX_NAME = 64
HEALTH = ("unknown", "healthy", "degraded", "unhealthy")
ROLES = ("unknown", "standby", "leader")
REJECT_REASONS = ("truncated", "bad_magic", "bad_version", "malformed", "wrong_cluster",
                  "forged", "unknown_node", "unknown_key", "wrong_source", "stale", "replayed",
                  "duplicate", "self", "rate_limited")


@dataclass(frozen=True)
class Heartbeat:
    cluster: str
    node: str
    incarnation: int
    seq: int
    sent_us: int
    health: str = "unknown"
    role: str = "unknown"
    suspects: tuple[str, ...] | None = None  # None: not carried (version 2)
    # Sent out of schedule to carry news at once: receivers take its news but do not
    # time it, so it neither shortens the gaps their detectors learn nor counts for liveness.
    extra: bool = False


def _trailer(suspects: tuple[str, ...] | None) -> bytes:
    """The version 3 suspicion list, or b"" when the packet goes as version 2."""
    names = [s.encode() for s in suspects or ()]
    if not names or len(names) > MAX_SUSPECTS or not all(1 <= len(n) <= MAX_NAME for n in names):
        return b""
    return bytes([len(names)]) + b"".join(bytes([len(n)]) + n for n in names)


def _suspects(packet: bytes, start: int, tail: int = SIG_LEN) -> tuple[tuple[str, ...], int]:
    """Parse a suspicion trailer at `start`, `tail` bytes of signature or tag
    after it; returns the names and where the signature begins. Raises
    WireError("malformed")."""
    end = len(packet) - tail
    if start >= end or not 1 <= packet[start] <= MAX_SUSPECTS:
        raise WireError("malformed", "suspect count missing or out of range")
    names, pos = [], start + 1
    for _ in range(packet[start]):
        if pos >= end or not 1 <= packet[pos] <= MAX_NAME or pos + 1 + packet[pos] > end:
            raise WireError("malformed", "suspect names do not match the packet length")
        try:
            names.append(packet[pos + 1:pos + 1 + packet[pos]].decode())
        except UnicodeDecodeError:
            raise WireError("malformed", "suspect name is not UTF-8") from None
        pos += 1 + packet[pos]
    if pos != end:
        raise WireError("malformed", "suspect names do not match the packet length")
    return tuple(names), pos


def _body(hb: Heartbeat, version: int, key_id: int) -> bytes:
    """Header, names and suspicion trailer. Raises WireError on unencodable fields."""
    c, n = hb.cluster.encode(), hb.node.encode()
    if not (1 <= len(c) <= MAX_NAME and 1 <= len(n) <= MAX_NAME):
        raise WireError("malformed", "cluster and node names must be 1..64 bytes")
    trailer = _trailer(hb.suspects)
    if version != VERSION_MAC:
        version = VERSION_SUSPECTS if trailer else VERSION
    flags = (FLAG_EXTRA if hb.extra else 0) | (FLAG_SUSPECTS if trailer and version == VERSION_MAC else 0)
    try:
        head = _HEADER.pack(MAGIC, version, flags, len(c), len(n), hb.incarnation, hb.seq,
                            hb.sent_us, HEALTH.index(hb.health), ROLES.index(hb.role), key_id)
    except (struct.error, ValueError) as e:
        raise WireError("malformed", str(e)) from None
    return head + c + n + trailer


def encode(hb: Heartbeat, signer: SigningKeys) -> bytes:
    """Serialise one heartbeat and sign it with the sender's current key
    (version 2 or 3, for any receiver). Raises WireError on unencodable fields."""
    body = _body(hb, VERSION, signer.send)
    return body + signer.sign(body)


def mac_body(hb: Heartbeat, key_id: int) -> bytes:
    """The part of a version 4 packet that is the same for every receiver."""
    return _body(hb, VERSION_MAC, key_id)


def _tag(key: bytes, signed: bytes, receiver: str) -> bytes:
    return hmac.digest(key, signed + receiver.encode(), "sha256")[:MAC_LEN]


def seal(body: bytes, key: bytes, peer_id: int, receiver: str) -> bytes:
    """A version 4 packet for `receiver`, whose key `peer_id` with ours made `key`."""
    signed = body + _PEER_ID.pack(peer_id)
    return signed + _tag(key, signed, receiver)


@dataclass(frozen=True)
class Unverified:
    """A packet whose layout, cluster and fields parse, before its signature is
    checked: what the receiver's cheap checks (node, source, sequence, rate)
    read, so a stranger's packet costs a parse and not an Ed25519 verify."""

    hb: Heartbeat
    key_id: int
    signed: bytes  # every byte the signature (or tag) covers
    signature: bytes  # the Ed25519 signature, or a version 4 packet's tag
    peer_id: int = 0  # version 4: the receiver's key id the pair key was made with

    def verify(self, ring: KeyRing, pairs: PairKeys | None = None) -> Heartbeat:
        """The heartbeat, if its named node signed it with a key in `ring` (or,
        version 4, tagged it with our pair key). Raises WireError(unknown_node |
        unknown_key | forged)."""
        if not self.peer_id:
            ring.verify(self.hb.node, self.key_id, self.signed, self.signature)
            return self.hb
        if pairs is None:
            raise WireError("unknown_key", f"{self.hb.node} sent a pair-key packet; this receiver has "
                                           "no signing key to make pair keys with")
        key = pairs.key(self.peer_id, self.hb.node, self.key_id)
        if not hmac.compare_digest(_tag(key, self.signed, pairs.me), self.signature):
            raise WireError("forged", f"tag does not match the pair key of {self.hb.node}'s key "
                                      f"{self.key_id} and ours {self.peer_id}")
        return self.hb


def parse(packet: bytes, cluster: str) -> Unverified:
    """Parse one packet for `cluster` without checking its signature. Never
    raises anything but WireError (truncated, bad_magic, bad_version,
    malformed, wrong_cluster); costs a few microseconds whatever the input."""
    if len(packet) < MIN_LEN:
        raise WireError("truncated", f"{len(packet)} bytes < {MIN_LEN}")
    (magic, version, flags, clen, nlen, inc, seq, sent, health, role,
     key_id) = _HEADER.unpack_from(packet)
    if magic != MAGIC:
        raise WireError("bad_magic")
    if version not in (VERSION, VERSION_SUSPECTS, VERSION_MAC):
        raise WireError("bad_version", f"version {version}, this node speaks {VERSION}, "
                                       f"{VERSION_SUSPECTS} and {VERSION_MAC}")
    tail = _PEER_ID.size + MAC_LEN if version == VERSION_MAC else SIG_LEN
    named = _HEADER.size + clen + nlen
    if not (1 <= clen <= MAX_NAME and 1 <= nlen <= MAX_NAME) or len(packet) < named + tail:
        raise WireError("malformed", "name lengths do not match the packet length")
    listed = version == VERSION_SUSPECTS or (version == VERSION_MAC and flags & FLAG_SUSPECTS)
    suspects, end = _suspects(packet, named, tail) if listed else (None, named)
    if len(packet) != end + tail:
        raise WireError("malformed", "name lengths do not match the packet length")
    if packet[_HEADER.size:_HEADER.size + clen] != cluster.encode():
        raise WireError("wrong_cluster")
    try:
        node = packet[_HEADER.size + clen:named].decode()
    except UnicodeDecodeError:
        raise WireError("malformed", "node name is not UTF-8") from None
    if health >= len(HEALTH) or role >= len(ROLES):
        raise WireError("malformed", "health or role out of range")
    hb = Heartbeat(cluster, node, inc, seq, sent, HEALTH[health], ROLES[role], suspects,
                   bool(flags & FLAG_EXTRA))
    if version != VERSION_MAC:
        return Unverified(hb, key_id, packet[:end], packet[end:])
    (peer_id,) = _PEER_ID.unpack_from(packet, end)
    if not peer_id:
        raise WireError("malformed", "receiver key id 0")
    return Unverified(hb, key_id, packet[:end + _PEER_ID.size], packet[end + _PEER_ID.size:], peer_id)


def decode(packet: bytes, ring: KeyRing, cluster: str) -> Heartbeat:
    """Parse one packet for `cluster` and verify its signature against the
    named node's key in `ring`. Raises WireError."""
    return parse(packet, cluster).verify(ring)


class ReplayGuard:
    """Per-sender anti-replay window (as IPsec's): accepts each (incarnation,
    seq) once, tolerates reordering within `window` packets.

    `check` returns "accepted", "duplicate" (seen within the window: the
    normal fate of the second copy on a dual-link node) or "replayed" (older
    than the window, or an older incarnation).
    """

    def __init__(self, window: int = 64):
        self.window = window
        self.incarnation = -1
        self.highest = -1
        self._seen = 0  # bit i set: seq (highest - i) was seen

    def peek(self, incarnation: int, seq: int) -> str:
        """What `check` would answer, changing nothing: the receiver asks before
        it verifies a signature and records (`check`) only authentic packets, so
        a forged packet can never move the window."""
        if incarnation != self.incarnation:
            return "replayed" if incarnation < self.incarnation else "accepted"
        if seq > self.highest:
            return "accepted"
        offset = self.highest - seq
        if offset >= self.window:
            return "replayed"
        return "duplicate" if self._seen >> offset & 1 else "accepted"

    def check(self, incarnation: int, seq: int) -> str:
        if incarnation < self.incarnation:
            return "replayed"
        if incarnation > self.incarnation:
            self.incarnation, self.highest, self._seen = incarnation, seq, 1
            return "accepted"
        if seq > self.highest:
            shift = seq - self.highest  # up to 2**64: never shift by it (a jump clears the window)
            self._seen = ((self._seen << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            self.highest = seq
            return "accepted"
        offset = self.highest - seq
        if offset >= self.window:
            return "replayed"
        if self._seen >> offset & 1:
            return "duplicate"
        self._seen |= 1 << offset
        return "accepted"
