"""etcd users and roles for a Vigil cluster: least privilege per client,
enforced by etcd itself (`vigil etcd-auth init`, and the secure lab).

etcd grants by key and key range, so every role below is a list of
(permission, key or prefix). `node_grants(keys, node)` and `GRANTS` are the
one place they are written; docs/architecture.md ("Trust model") explains
them, and tests/system/test_secure_lab.py holds real etcd to them.

- `vigil-<cluster>-node-<N>`, one role per agent, for etcd user N (the agent's
  user name is its node name):
  read everything under /vigil/<cluster>/ and /vigil-jobs/<cluster>/;
  write its own member record `members/N`, the election key `leader`, its own
  drain place `drain/N` and the key every drain claim moves, `drain-epoch`;
  write `state/`, `held/`, `fencing/` and `events/` (the leader writes other
  nodes' states, holds and fencing markers, and every node appends events,
  and etcd cannot say "only while leading" or "only append"), `payloads/` (a
  stream continued on another node keeps its id, and a batch shard's owner
  key `payloads/job:<id>:<shard>` is claimed by whichever node creates it
  first, so no per-node prefix can hold them), and batch jobs' `progress/`
  and `result/`. Not writable: other nodes' member records, `switchover`,
  `config`, job specs and inputs. etcd refuses a lease revoke unless the
  user may write every key bound to the lease, so a node can revoke no other
  node's lease (each holds that node's member record).
- `vigil-<cluster>-operator`  read and write both prefixes (switchover,
  fence, maintenance, jobs)
- `vigil-<cluster>-router`    read /vigil/<cluster>/: a router follows the
  cluster, never changes it; read and write /vigil-idem/<cluster>/, where it
  records the Idempotency-Keys it runs (vigil.store.idem)
- `vigil-<cluster>-gateway`   read /vigil/<cluster>/: the actuator gateway
  checks the leader key
plus `root` (etcd requires it to enable auth), whose password only the
person who set the cluster up holds.

Clients authenticate with a user name and password (vigil.store.etcd); their
TLS client certificates carry no common name, because etcd's JSON gateway
refuses one when auth is on.
"""

from __future__ import annotations

import base64
import secrets

from vigil.errors import StoreError
from vigil.fields import NAME_RE
from vigil.store.base import prefix_end
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys

KINDS = ("agent", "operator", "router", "gateway")
READ, READWRITE = "READ", "READWRITE"
# (permission, key, is a prefix)
Grant = tuple[str, str, bool]


def node_role(cluster: str, node: str) -> str:
    return f"vigil-{cluster}-node-{node}"


def node_grants(keys: Keys, node: str) -> list[Grant]:
    """What agent `node` may read and write (see the module docstring)."""
    return [(READ, keys.prefix, True), (READ, keys.jobs, True),
            (READWRITE, keys.member(node), False), (READWRITE, keys.leader, False),
            (READWRITE, keys.drain_claim(node), False), (READWRITE, keys.drain_epoch, False),
            *((READWRITE, p, True) for p in (keys.states, keys.holds, keys.fencing, keys.events,
                                             keys.payloads, keys.jobs + "progress/", keys.jobs + "result/"))]


def kind_grants(keys: Keys, kind: str) -> list[Grant]:
    """What an operator, router or gateway may do."""
    if kind == "operator":
        return [(READWRITE, keys.prefix, True), (READWRITE, keys.jobs, True)]
    if kind == "router":
        return [(READ, keys.prefix, True), (READWRITE, keys.idempotency, True)]
    return [(READ, keys.prefix, True)]


def new_password() -> str:
    return secrets.token_hex(16)


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


async def _ok(store: EtcdStore, path: str, body: dict, also: tuple[str, ...] = ()) -> None:
    try:
        await store.call(path, body)
    except StoreError as e:
        if not any(w in str(e) for w in ("already exist", "already enabled", *also)):
            raise


async def _role(store: EtcdStore, role: str, grants: list[Grant]) -> None:
    await _ok(store, "auth/role/add", {"name": role})
    for perm, key, prefix in grants:
        await _ok(store, "auth/role/grant", {"name": role, "perm": {
            "permType": perm, "key": _b64(key), **({"range_end": _b64(prefix_end(key))} if prefix else {})}})


async def enable_auth(store: EtcdStore, cluster: str, users: dict[str, tuple[str, str]],
                      root_password: str) -> None:
    """Create the roles, `users` (name -> (kind, password); an agent's name is
    its node name) and root, then turn auth on. `store` must not authenticate
    (auth is still off). Idempotent up to the enable: a user set up by an
    earlier version, when every agent shared one read-write role, loses that
    role. Raises StoreError."""
    keys = Keys(cluster)
    for name, (kind, _) in users.items():
        if kind not in KINDS:
            raise StoreError(f"user {name}: kind {kind!r} is none of {', '.join(KINDS)}")
        if not NAME_RE.match(name) or name == "root":
            raise StoreError(f"user {name!r}: a user (an agent's: its node name) is 1-64 letters, digits, "
                             "'_', '.' or '-', and not root")
    for kind in KINDS[1:]:
        await _role(store, f"vigil-{cluster}-{kind}", kind_grants(keys, kind))
    for name, (kind, password) in {**users, "root": ("root", root_password)}.items():
        await _ok(store, "auth/user/add", {"name": name, "password": password})
        if kind == "agent":
            role = node_role(cluster, name)
            await _role(store, role, node_grants(keys, name))
            await _ok(store, "auth/user/revoke", {"name": name, "role": f"vigil-{cluster}-agent"},
                      ("not granted", "not found"))
        else:
            role = "root" if kind == "root" else f"vigil-{cluster}-{kind}"
        await _ok(store, "auth/user/grant", {"user": name, "role": role})
    await _ok(store, "auth/enable", {})


async def remove_users(store: EtcdStore, cluster: str, names: list[str]) -> list[str]:
    """Delete etcd users `names` and a removed node's own role (`vigil init
    --remove-node`); the ones that were there. Raises StoreError."""
    gone = []
    for name in names:
        try:
            await store.call("auth/user/delete", {"name": name})
            gone.append(name)
        except StoreError as e:
            if "not found" not in str(e):
                raise
        await _ok(store, "auth/role/delete", {"role": node_role(cluster, name)}, ("not found",))
    return gone


AUTH_ON = ("user name is empty", "permission denied", "invalid auth token", "authentication")


def auth_is_on(e: StoreError) -> bool:
    """`e` says etcd wants a user: auth is on already (a later `apply`)."""
    return any(w in str(e).lower() for w in AUTH_ON)
