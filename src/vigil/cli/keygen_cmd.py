"""`vigil keygen`: each node's heartbeat signing keys and the cluster's key ring.

Rotation without a flag day (docs/operations.md): add a key (every ring
learns it), reload everyone, `--use` it on its node, reload that node,
`--retire` the old one, reload everyone.
"""

from __future__ import annotations

from pathlib import Path

from vigil.errors import ConfigError
from vigil.identity import (MAX_KEY_ID, SigningKeys, generate, load_signing_keys, read_ring_doc,
                            write_ring, write_signing_keys)

_NEXT = "then reload every node, router and gateway that reads the ring (SIGHUP)"


def register(sub) -> None:
    p = sub.add_parser("keygen", help="make, switch or retire a node's heartbeat signing key",
                       description="Add a new signing key for --node to --key-file (secret, that node "
                                   "only) and its public half to --keyring (every member); or --use ID "
                                   "to sign with an added key; or --retire ID.")
    p.add_argument("--node", help="the node the key belongs to (when adding)")
    p.add_argument("--key-file", required=True, help="the node's signing key file (created 0600)")
    p.add_argument("--keyring", help="the cluster's key ring file (public keys; created 0644)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--use", type=int, metavar="ID", help="sign with key ID from the next reload on")
    g.add_argument("--retire", type=int, metavar="ID", help="remove key ID from the key file and the ring")
    p.set_defaults(func=keygen)


def keygen(args) -> int:
    path = Path(args.key_file)
    if args.use is not None:
        return _use(path, args.use, Path(args.keyring) if args.keyring else None)
    if not args.keyring:
        raise ConfigError("--keyring", None, "name the cluster's key ring file")
    ring = Path(args.keyring)
    if args.retire is not None:
        return _retire(path, ring, args.retire)
    return _add(path, ring, args.node)


def _add(path: Path, ring_path: Path, node: str | None) -> int:
    if path.exists():
        sk = load_signing_keys(path, "--key-file")
        if node not in (None, sk.node):
            raise ConfigError("--node", node, f"{path} holds {sk.node}'s keys: one file per node")
    elif not node:
        raise ConfigError("--node", None, "name the node the new key file is for")
    else:
        sk = SigningKeys(node, 0, {})
    ring = read_ring_doc(ring_path)
    kid = max([*sk.keys, *ring.get(sk.node, {}), 0]) + 1
    if kid > MAX_KEY_ID:
        raise ConfigError("--key-file", str(path), f"has used every key id up to {MAX_KEY_ID}")
    sk.keys[kid] = generate()
    first = sk.send == 0
    if first:
        sk.send = kid
    ring.setdefault(sk.node, {})[kid] = sk.public(kid)
    write_ring(ring_path, ring)  # the ring first: a key is never used before it can be verified
    write_signing_keys(path, sk)
    print(f"{sk.node}: key {kid} added to {path} and {ring_path}" +
          (" (signing with it)." if first else
           f"; still signing with key {sk.send}. Copy {ring_path} to every member, {_NEXT}; "
           f"then `vigil keygen --key-file {path} --use {kid}` and reload {sk.node}."))
    return 0


def _use(path: Path, kid: int, ring_path: Path | None) -> int:
    sk = load_signing_keys(path, "--key-file")
    if kid not in sk.keys:
        raise ConfigError("--use", kid, f"{path} has keys {sorted(sk.keys)}: add one first")
    if ring_path is not None and sk.public(kid) != read_ring_doc(ring_path).get(sk.node, {}).get(kid):
        raise ConfigError("--use", kid, f"{ring_path} does not hold {sk.node}'s key {kid}: peers "
                                        "would refuse its heartbeats; add it to the ring first")
    sk.send = kid
    write_signing_keys(path, sk)
    print(f"{sk.node}: signs with key {kid} from its next reload (SIGHUP its agent).")
    return 0


def _retire(path: Path, ring_path: Path, kid: int) -> int:
    sk = load_signing_keys(path, "--key-file")
    if kid == sk.send:
        raise ConfigError("--retire", kid, f"{sk.node} still signs with key {kid}: `--use` another first")
    ring = read_ring_doc(ring_path)
    if kid not in sk.keys and kid not in ring.get(sk.node, {}):
        raise ConfigError("--retire", kid, f"{sk.node} has no key {kid} in {path} (it has {sorted(sk.keys)}) "
                                           f"nor in {ring_path}: nothing was changed; check the key id")
    sk.keys.pop(kid, None)
    ring.get(sk.node, {}).pop(kid, None)
    write_signing_keys(path, sk)
    write_ring(ring_path, ring)
    print(f"{sk.node}: key {kid} retired from {path} and {ring_path}; copy the ring to every "
          f"member, {_NEXT}.")
    return 0
