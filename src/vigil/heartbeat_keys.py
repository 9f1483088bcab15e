"""The `heartbeat:` key fields of a node's or router's configuration: where
the signing keys and the key ring live (vigil.identity reads them), and the
send-time window. Errors are ConfigError naming the field and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.errors import ConfigError
from vigil.identity import KeyRing, SigningKeys, load_ring, load_signing_keys, public_hex


@dataclass(frozen=True)
class HeartbeatKeys:
    """Where this node's signing keys and the cluster's key ring live (read
    again on SIGHUP), what they held at load, and the send-time window."""

    keyring_file: str
    ring: KeyRing
    signing_key_file: str | None = None
    signing: SigningKeys | None = None
    max_clock_skew: float = 2.0

    def reload(self, node: str | None = None, peers: list[str] = ()) -> "HeartbeatKeys":
        """Read both files again. Raises ConfigError (the caller keeps the old keys)."""
        keys = parse_heartbeat_keys({"keyring_file": self.keyring_file, "signing_key_file": self.signing_key_file,
                      "max_clock_skew": self.max_clock_skew}, Path("."), node)
        ring_covers(keys, peers)
        return keys


def ring_covers(keys: HeartbeatKeys, peers: list[str]) -> None:
    for p in peers:
        if p not in keys.ring.members:
            raise ConfigError("heartbeat.keyring_file", keys.keyring_file, f"has no key for peer "
                              f"{p}, so its heartbeats would all be refused: add it (`vigil keygen`)")


def parse_heartbeat_keys(hb: dict[str, Any], base: Path, node: str | None) -> HeartbeatKeys:
    """The heartbeat keys: `node` signs with its own key file (routers and
    gateways pass None: they only verify)."""
    if "key" in hb or "key_file" in hb:
        raise ConfigError("heartbeat.key", None, "a shared cluster key let any node speak for any "
                          "other and is no longer read: give each node its own signing key with "
                          "`vigil keygen --node NAME --key-file NAME.key --keyring cluster.keyring` and "
                          "set heartbeat.signing_key_file and heartbeat.keyring_file")
    if not hb.get("keyring_file"):
        raise ConfigError("heartbeat.keyring_file", None, "give the cluster's key ring (public keys), "
                          "made by `vigil keygen`")
    ring_path = str(base / str(hb["keyring_file"]))
    skew = hb.get("max_clock_skew", 2.0)
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not 0.1 <= skew <= 300:
        raise ConfigError("heartbeat.max_clock_skew", skew, "must be 0.1..300 seconds: how far a "
                          "packet's send time may be from ours (keep the clocks synchronised)")
    keys = HeartbeatKeys(ring_path, load_ring(ring_path, "heartbeat.keyring_file"), max_clock_skew=float(skew))
    if node is None:
        return keys
    if not hb.get("signing_key_file"):
        raise ConfigError("heartbeat.signing_key_file", None, "give this node's signing key file, "
                          f"made by `vigil keygen --node {node}`")
    sk_path = str(base / str(hb["signing_key_file"]))
    signing = load_signing_keys(sk_path, "heartbeat.signing_key_file")
    if signing.node != node:
        raise ConfigError("heartbeat.signing_key_file", sk_path, f"holds {signing.node}'s keys, not "
                          f"{node}'s: each node signs with its own")
    mine = keys.ring.members.get(node, {}).get(signing.send)
    if mine is None or public_hex(mine) != signing.public(signing.send):
        raise ConfigError("heartbeat.keyring_file", ring_path, f"does not hold {node}'s key "
                          f"{signing.send} (the one it signs with), so peers would refuse every "
                          "heartbeat: add it to the ring on every member first (`vigil keygen`)")
    return HeartbeatKeys(ring_path, keys.ring, sk_path, signing, float(skew))
