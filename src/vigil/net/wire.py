"""Heartbeat packets: a versioned binary format, signed by the sending node.

Layout (network byte order), version 2:

    offset size  field
    0      4     magic b"VGHB"
    4      1     version (1)
    5      1     flags (reserved, 0)
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
    36+C+N 64    Ed25519 signature over every byte before it, by the named node's
                 key: a node can speak only for itself

Version 1 (HMAC with one shared cluster key) let any key holder speak for
any node and is no longer accepted.

`decode` never raises anything but `WireError`, whose `reason` is one of
REJECT_REASONS: every rejected packet lands in exactly one counter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vigil.errors import WireError
from vigil.identity import SIG_LEN, KeyRing, SigningKeys

MAGIC = b"VGHB"
VERSION = 2
_HEADER = struct.Struct("!4sBBBBQQQBBH")
MIN_LEN = _HEADER.size + 2 + SIG_LEN
MAX_NAME = 64
HEALTH = ("unknown", "healthy", "degraded", "unhealthy")
ROLES = ("unknown", "standby", "leader")
REJECT_REASONS = ("truncated", "bad_magic", "bad_version", "malformed", "wrong_cluster",
                  "forged", "unknown_node", "unknown_key", "wrong_source", "stale", "replayed",
                  "duplicate", "self")


@dataclass(frozen=True)
class Heartbeat:
    cluster: str
    node: str
    incarnation: int
    seq: int
    sent_us: int
    health: str = "unknown"
    role: str = "unknown"


def encode(hb: Heartbeat, signer: SigningKeys) -> bytes:
    """Serialise one heartbeat and sign it with the sender's current key.
    Raises WireError on unencodable fields."""
    c, n = hb.cluster.encode(), hb.node.encode()
    if not (1 <= len(c) <= MAX_NAME and 1 <= len(n) <= MAX_NAME):
        raise WireError("malformed", "cluster and node names must be 1..64 bytes")
    try:
        head = _HEADER.pack(MAGIC, VERSION, 0, len(c), len(n), hb.incarnation, hb.seq,
                            hb.sent_us, HEALTH.index(hb.health), ROLES.index(hb.role), signer.send)
    except (struct.error, ValueError) as e:
        raise WireError("malformed", str(e)) from None
    body = head + c + n
    return body + signer.sign(body)


def decode(packet: bytes, ring: KeyRing, cluster: str) -> Heartbeat:
    """Parse one packet for `cluster` and verify its signature against the
    named node's key in `ring`. Raises WireError."""
    if len(packet) < MIN_LEN:
        raise WireError("truncated", f"{len(packet)} bytes < {MIN_LEN}")
    (magic, version, _flags, clen, nlen, inc, seq, sent, health, role,
     key_id) = _HEADER.unpack_from(packet)
    if magic != MAGIC:
        raise WireError("bad_magic")
    if version != VERSION:
        raise WireError("bad_version", f"version {version}, this node speaks {VERSION}")
    end = _HEADER.size + clen + nlen
    if not (1 <= clen <= MAX_NAME and 1 <= nlen <= MAX_NAME) or len(packet) != end + SIG_LEN:
        raise WireError("malformed", "name lengths do not match the packet length")
    if packet[_HEADER.size:_HEADER.size + clen] != cluster.encode():
        raise WireError("wrong_cluster")
    try:
        node = packet[_HEADER.size + clen:end].decode()
    except UnicodeDecodeError:
        raise WireError("malformed", "node name is not UTF-8") from None
    ring.verify(node, key_id, packet[:end], packet[end:])
    if health >= len(HEALTH) or role >= len(ROLES):
        raise WireError("malformed", "health or role out of range")
    return Heartbeat(cluster, node, inc, seq, sent, HEALTH[health], ROLES[role])


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

    def check(self, incarnation: int, seq: int) -> str:
        if incarnation < self.incarnation:
            return "replayed"
        if incarnation > self.incarnation:
            self.incarnation, self.highest, self._seen = incarnation, seq, 1
            return "accepted"
        if seq > self.highest:
            shift = seq - self.highest
            self._seen = ((self._seen << shift) | 1) & ((1 << self.window) - 1)
            self.highest = seq
            return "accepted"
        offset = self.highest - seq
        if offset >= self.window:
            return "replayed"
        if self._seen >> offset & 1:
            return "duplicate"
        self._seen |= 1 << offset
        return "accepted"
