"""The cluster's secrets as `vigil init` keeps them in OUT/secrets (root, 0700):
the source every machine's bundle is rendered from, and what a later
`--add-node`/`--remove-node` run extends. Keep it off the nodes, backed up.

Contract: `ensure` creates what is missing and never replaces what exists
(so a second run renders the same bundles, and a node added later gets keys
and certificates signed by the same CA); `retire` moves a removed node's
files to secrets/retired/NAME/ (never deleted: an audit may need them).
Layout: tls/ (ca.pem, ca.key; NAME.pem/.key per etcd client: each node,
router-NODE, gateway, operator; NODE-api.pem/.key, NODE's agent API and its
router's admin; etcd-NODE.pem/.key, each etcd voter's server and peer
certificate), passwords/USER.password (every etcd user and root), keys/
(NODE.key signing keys, cluster.keyring, continue.key), tokens/ (operator's
API token).
"""

from __future__ import annotations

import secrets as _random
import shutil
from pathlib import Path

from vigil.certs import init_ca, issue
from vigil.deploy.inventory import Inventory, NodeSpec
from vigil.files import write_atomic
from vigil.identity import SigningKeys, generate, read_ring_doc, write_ring, write_signing_keys
from vigil.store.etcd_auth import new_password

SERVICES = ("gateway", "operator")


class Secrets:
    def __init__(self, root: Path):
        self.root = root
        self.tls, self.passwords, self.keys, self.tokens = (root / d for d in ("tls", "passwords", "keys",
                                                                                "tokens"))

    def users(self, inv: Inventory) -> dict[str, str]:
        """Every etcd user -> its kind (vigil.store.etcd_auth.KINDS)."""
        out = {n.name: "agent" for n in inv.nodes}
        out |= {f"router-{n.name}": "router" for n in inv.nodes}
        return out | {s: s for s in SERVICES}

    def ensure(self, inv: Inventory) -> None:
        """Create every missing secret for `inv` (see the module docstring)."""
        for d in (self.root, self.tls, self.passwords, self.keys, self.tokens):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
            d.chmod(0o700)
        if not (self.tls / "ca.key").exists():
            init_ca(self.tls, f"Vigil {inv.cluster} CA")
        for node in inv.nodes:
            self._node(inv, node)
        for name in SERVICES:
            self._cert(name)
        for user in [*self.users(inv), "root"]:
            self._secret(self.passwords / f"{user}.password", new_password)
        self._secret(self.tokens / "operator.api-token", new_password)
        self._secret(self.keys / "continue.key", lambda: _random.token_hex(32))

    def _node(self, inv: Inventory, node: NodeSpec) -> None:
        self._cert(node.name)
        self._cert(f"router-{node.name}")
        self._cert(f"{node.name}-api", [node.address, "127.0.0.1"])
        if node.etcd:
            self._cert(f"etcd-{node.name}", sorted({node.address, "127.0.0.1", "localhost", node.name}))
        if not (self.keys / f"{node.name}.key").exists():
            ring = read_ring_doc(self.keys / "cluster.keyring") if (self.keys / "cluster.keyring").exists() \
                else {}
            sk = SigningKeys(node.name, 1, {1: generate()})
            ring[node.name] = {1: sk.public(1)}
            write_ring(self.keys / "cluster.keyring", ring)  # the ring first, as `vigil keygen`
            write_signing_keys(self.keys / f"{node.name}.key", sk)

    def _cert(self, name: str, hosts: list[str] = ()) -> None:
        if not (self.tls / f"{name}.pem").exists():
            issue(self.tls, name, list(hosts))

    @staticmethod
    def _secret(path: Path, make) -> None:
        if not path.exists():
            write_atomic(path, make() + "\n", 0o600)

    def retire(self, name: str) -> list[str]:
        """Move node NAME's files aside and drop its key from the ring; what moved."""
        dest = self.root / "retired" / name
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        moved = []
        for d in (self.tls, self.passwords, self.keys):
            for f in sorted(d.glob("*")):
                stem = f.name.rsplit(".", 1)[0]
                if stem in (name, f"router-{name}", f"{name}-api", f"etcd-{name}"):
                    shutil.move(str(f), dest / f.name)
                    moved.append(f.name)
        ring_path = self.keys / "cluster.keyring"
        ring = read_ring_doc(ring_path)
        if ring.pop(name, None) is not None:
            write_ring(ring_path, ring)
        return moved

    def voters(self) -> set[str]:
        """The nodes with an etcd server certificate here: the voters `vigil init` made."""
        return {p.stem.removeprefix("etcd-") for p in self.tls.glob("etcd-*.pem")}

    def retired(self) -> list[str]:
        """Every node `--remove-node` retired (its etcd users must be gone)."""
        d = self.root / "retired"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def known_nodes(self) -> set[str]:
        """The nodes that have a signing key here."""
        return {p.stem for p in self.keys.glob("*.key") if p.name != "continue.key"}
