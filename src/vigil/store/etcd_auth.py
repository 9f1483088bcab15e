"""etcd users and roles for a Vigil cluster: least privilege per kind of
client, enforced by etcd itself (`vigil etcd-auth init`, and the secure lab).

Roles, each on the cluster's prefix /vigil/<cluster>/ only (agents and
operators also on its batch jobs' /vigil-jobs/<cluster>/):
- vigil-<cluster>-agent     read and write (leases, member records, leader key, events)
- vigil-<cluster>-operator  read and write (switchover, fence, maintenance)
- vigil-<cluster>-router    read only: a router can follow the cluster, never change it
- vigil-<cluster>-gateway   read only: the actuator gateway checks the leader key
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
from vigil.store.base import prefix_end
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys

KINDS = {"agent": "READWRITE", "operator": "READWRITE", "router": "READ", "gateway": "READ"}
JOB_KINDS = ("agent", "operator")  # who works on and submits batch jobs


def new_password() -> str:
    return secrets.token_hex(16)


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


async def _ok(store: EtcdStore, path: str, body: dict) -> None:
    try:
        await store._call(path, body)
    except StoreError as e:
        if "already exist" not in str(e) and "already enabled" not in str(e):
            raise


async def enable_auth(store: EtcdStore, cluster: str, users: dict[str, tuple[str, str]],
                      root_password: str) -> None:
    """Create the roles, `users` (name -> (kind, password)) and root, then turn
    auth on. `store` must not authenticate (auth is still off). Idempotent up
    to the enable; raises StoreError."""
    keys = Keys(cluster)
    for kind, perm in KINDS.items():
        role = f"vigil-{cluster}-{kind}"
        await _ok(store, "auth/role/add", {"name": role})
        for prefix in (keys.prefix, keys.jobs) if kind in JOB_KINDS else (keys.prefix,):
            await _ok(store, "auth/role/grant", {"name": role, "perm": {
                "permType": perm, "key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}})
    for name, (kind, password) in {**users, "root": ("root", root_password)}.items():
        if kind not in (*KINDS, "root"):
            raise StoreError(f"user {name}: kind {kind!r} is none of {', '.join(KINDS)}")
        await _ok(store, "auth/user/add", {"name": name, "password": password})
        role = "root" if kind == "root" else f"vigil-{cluster}-{kind}"
        await _ok(store, "auth/user/grant", {"user": name, "role": role})
    await _ok(store, "auth/enable", {})
