"""Node identities: each node signs what it says (heartbeats, actuator
commands) with its own Ed25519 key; everyone verifies against a key ring of
public keys. A node, router or gateway that holds the ring can check every
node but speak for none, so a leaked ring or a compromised router forges
nothing; a leaked signing key speaks only for its own node.

Files (YAML, written by `vigil keygen`):
- signing key file, secret, one per node (mode 0600, root):
      node: n1
      send: 2            # the key id this node signs with
      keys: {1: <hex seed>, 2: <hex seed>}
- key ring, public but integrity-critical (root-owned, not group/other
  writable), the same on every node, router and gateway:
      n1: {1: <hex public key>, 2: <hex public key>}
      n2: {1: <hex public key>}

Key ids (1..65535) make rotation possible without a flag day: a receiver
accepts every id in its ring, so a new key is added to every ring first,
then its node starts signing with it, then the old one is retired
(docs/operations.md, "Rotating heartbeat keys").

Pair keys (`PairKeys`): a heartbeat to a peer whose key id we know is
authenticated with HMAC-SHA256 under a key only the two nodes can derive:
HKDF-SHA256 of the X25519 agreement between their Ed25519 keys (converted
as libsodium's crypto_sign_ed25519_*_to_curve25519 do), salted with the
cluster and bound to both names and key ids. ~2 µs per packet instead of
~100 µs for an Ed25519 check; still only the sender (or the receiver
itself) can make a packet that verifies, so a node speaks only for itself.

Errors: loading raises ConfigError naming the file, the entry and the fix;
`verify` raises WireError with reason unknown_node, unknown_key or forged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from vigil.errors import ConfigError, WireError
from vigil.files import check_owner, load_yaml, write_atomic

SIG_LEN = 64
MAX_KEY_ID = 65535


@dataclass
class SigningKeys:
    """This node's private keys by id, and the one it signs with."""

    node: str
    send: int
    keys: dict[int, Ed25519PrivateKey]

    def sign(self, data: bytes) -> bytes:
        return self.keys[self.send].sign(data)

    def public(self, key_id: int) -> str:
        return public_hex(self.keys[key_id].public_key())


def public_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


@dataclass
class KeyRing:
    """Every member's public keys by node and id."""

    members: dict[str, dict[int, Ed25519PublicKey]] = field(default_factory=dict)

    def verify(self, node: str, key_id: int, data: bytes, signature: bytes) -> None:
        """Raises WireError(unknown_node | unknown_key | forged)."""
        ids = self.members.get(node)
        if ids is None:
            raise WireError("unknown_node", f"{node!r} is not in the key ring")
        key = ids.get(key_id)
        if key is None:
            raise WireError("unknown_key", f"{node!r} signed with key {key_id}, the ring has "
                                           f"{sorted(ids)}: add it to the ring or reload")
        try:
            key.verify(signature, data)
        except InvalidSignature:
            raise WireError("forged", f"signature does not match {node}'s key {key_id}") from None


_P = 2**255 - 19


def x25519_public(key: Ed25519PublicKey) -> X25519PublicKey:
    """The Montgomery form of an Ed25519 public key: u = (1 + y) / (1 - y) mod p."""
    y = int.from_bytes(key.public_bytes(Encoding.Raw, PublicFormat.Raw), "little") & ((1 << 255) - 1)
    u = (1 + y) * pow((1 - y) % _P, _P - 2, _P) % _P
    return X25519PublicKey.from_public_bytes(u.to_bytes(32, "little"))


def x25519_private(key: Ed25519PrivateKey) -> X25519PrivateKey:
    """The X25519 scalar of an Ed25519 seed: SHA-512(seed)[:32] (X25519 clamps it)."""
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


class PairKeys:
    """This node's heartbeat MAC keys, one per (my key id, peer, peer's key id),
    derived on first use and kept (a few per peer). Replaced, not updated, when
    the keys or the ring are reloaded."""

    def __init__(self, cluster: str, signing: SigningKeys, ring: KeyRing):
        self.cluster, self.me, self.signing, self.ring = cluster, signing.node, signing, ring
        self._keys: dict[tuple[int, str, int], bytes] = {}

    def key(self, my_id: int, peer: str, peer_id: int) -> bytes:
        """The pair key. Raises WireError(unknown_node | unknown_key)."""
        k = (my_id, peer, peer_id)
        if k not in self._keys:
            self._keys[k] = self._derive(*k)
        return self._keys[k]

    def _derive(self, my_id: int, peer: str, peer_id: int) -> bytes:
        mine = self.signing.keys.get(my_id)
        if mine is None:
            raise WireError("unknown_key", f"a packet for our key {my_id}, which we do not hold")
        ids = self.ring.members.get(peer)
        if ids is None:
            raise WireError("unknown_node", f"{peer!r} is not in the key ring")
        theirs = ids.get(peer_id)
        if theirs is None:
            raise WireError("unknown_key", f"{peer!r} used key {peer_id}, the ring has {sorted(ids)}")
        try:
            shared = x25519_private(mine).exchange(x25519_public(theirs))
        except ValueError:  # a low-order point: no key to agree on
            raise WireError("unknown_key", f"{peer!r}'s key {peer_id} agrees on no pair key") from None
        ends = sorted([(self.me, my_id), (peer, peer_id)])
        info = ("vigil heartbeat pair key|" + "|".join(f"{n}:{i}" for n, i in ends)).encode()
        return HKDF(SHA256(), 32, self.cluster.encode(), info).derive(shared)


def generate() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def load_signing_keys(path: str | Path, where: str) -> SigningKeys:
    raw = _read(Path(path), where, secret=True)
    if not isinstance(raw, dict) or set(raw) - {"node", "send", "keys"}:
        raise ConfigError(where, str(path), "must be a signing key file {node, send, keys} made by "
                                            "`vigil keygen`")
    node = raw.get("node")
    keys = {kid: _private(v, f"{where} ({path}) key {kid}") for kid, v in _ids(raw.get("keys"), path, where)}
    send = raw.get("send")
    if not isinstance(node, str) or not node:
        raise ConfigError(where, str(path), "names no node (`node: n1`)")
    if send not in keys:
        raise ConfigError(where, str(path), f"signs with key {send!r}, which is not among its keys "
                                            f"{sorted(keys)}: `vigil keygen --key-file {path} --use ID`")
    return SigningKeys(node, send, keys)


def load_ring(path: str | Path, where: str) -> KeyRing:
    raw = _read(Path(path), where)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(where, str(path), "must map node names to {key id: public key}")
    ring = KeyRing()
    for node, ids in raw.items():
        ring.members[str(node)] = {kid: _public(v, f"{where} ({path}) {node} key {kid}")
                                   for kid, v in _ids(ids, path, f"{where} {node}")}
    return ring


def _read(path: Path, where: str, secret: bool = False) -> Any:
    try:
        check_owner(path, where, secret)
        return load_yaml(path.read_text())
    except OSError as e:
        raise ConfigError(where, str(path), f"cannot be read ({e.strerror}); make it with "
                                            "`vigil keygen`") from None
    except yaml.YAMLError:
        raise ConfigError(where, str(path), "is not valid YAML; make it with `vigil keygen`") from None


def _ids(v: Any, path: Path, where: str) -> list[tuple[int, Any]]:
    if not isinstance(v, dict) or not v:
        raise ConfigError(where, str(path), "needs keys by id ({1: <hex>})")
    out = []
    for kid, key in v.items():
        if isinstance(kid, bool) or not isinstance(kid, int) or not 1 <= kid <= MAX_KEY_ID:
            raise ConfigError(where, str(path), f"key id {kid!r} must be an integer 1..{MAX_KEY_ID}")
        out.append((kid, key))
    return out


def _raw32(v: Any, where: str) -> bytes:
    try:
        b = bytes.fromhex(str(v))
    except ValueError:
        b = b""
    if len(b) != 32:
        raise ConfigError(where, "<hidden>", "must be 64 hex digits (32 bytes) as `vigil keygen` writes")
    return b


def _private(v: Any, where: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_raw32(v, where))


def _public(v: Any, where: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(_raw32(v, where))


# -- writing (vigil keygen) ----------------------------------------------------
def private_hex(key: Ed25519PrivateKey) -> str:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()


def write_yaml(path: Path, doc: Any, mode: int, header: str) -> None:
    """Atomically replace `path` (vigil.files.write_atomic)."""
    write_atomic(path, header + yaml.safe_dump(doc, sort_keys=True), mode)


def write_signing_keys(path: Path, sk: SigningKeys) -> None:
    write_yaml(path, {"node": sk.node, "send": sk.send,
                      "keys": {k: private_hex(v) for k, v in sk.keys.items()}}, 0o600,
               f"# {sk.node}'s Vigil signing keys: SECRET, root only, on {sk.node} only.\n")


def read_ring_doc(path: Path) -> dict[str, dict[int, str]]:
    """The ring as written (hex strings), for editing; {} when absent."""
    if not path.exists():
        return {}
    load_ring(path, "--keyring")  # validates
    return {str(n): dict(ids) for n, ids in (load_yaml(path.read_text()) or {}).items()}


def write_ring(path: Path, doc: dict[str, dict[int, str]]) -> None:
    write_yaml(path, doc, 0o644, "# Vigil key ring: every member's public keys. Same file on every "
                                 "node, router and gateway.\n")


def make_cluster_keys(directory: Path, nodes: list[str]) -> Path:
    """A fresh signing key (id 1) per node in DIR/NODE.key and their ring in
    DIR/cluster.keyring (labs and tests; operators use `vigil keygen`)."""
    ring: dict[str, dict[int, str]] = {}
    for node in nodes:
        sk = SigningKeys(node, 1, {1: generate()})
        write_signing_keys(directory / f"{node}.key", sk)
        ring[node] = {1: sk.public(1)}
    write_ring(directory / "cluster.keyring", ring)
    return directory / "cluster.keyring"
