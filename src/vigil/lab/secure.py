"""`vigil lab up --secure`: the lab's etcd with TLS for clients and peers,
client-certificate auth, and etcd users and roles (vigil.store.etcd_auth);
every agent, the router, the gateway and the operator with their own
certificate and etcd user; each agent's user (its node name) has a role of
its own, so one node's credential cannot rewrite another's records. Files live in DIR/tls (never committed):
ca.pem; etcd.pem (the members' server certificate); NAME.pem, NAME.key and
NAME.password per client (n1.., router, gateway, operator, harness).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from pathlib import Path
from typing import Any

from vigil.certs import init_ca, issue
from vigil.files import write_atomic
from vigil.lab.etcd import EtcdCluster, EtcdTLS
from vigil.store.etcd import EtcdStore
from vigil.store.etcd_auth import enable_auth, new_password

SERVICE_USERS = {"router": "router", "gateway": "gateway", "operator": "operator"}


def plan_tls(root: Path, hosts: list[str], nodes: list[str], etcd_hosts: list[str] = ()) -> EtcdTLS:
    """Make the CA and every certificate, password and API token; the harness's TLS."""
    d = root / "tls"
    init_ca(d, "Vigil lab CA")
    issue(d, "etcd", sorted({"127.0.0.1", "localhost", *hosts, *etcd_hosts}))
    for i, node in enumerate(nodes):  # each agent's API serves https on its host
        issue(d, f"{node}-api", sorted({"127.0.0.1", hosts[i] if hosts else "127.0.0.1"}))
    issue(d, "router-admin", ["127.0.0.1"])
    for name in [*nodes, *SERVICE_USERS, "harness"]:
        issue(d, name)
        _secret(d / f"{name}.password", new_password())
    tokens = {"operator": new_password(), "harness": new_password()}
    _secret(d / "api-tokens.yaml", "".join(f"{n}: {t}\n" for n, t in tokens.items()))
    for n, t in tokens.items():
        _secret(d / f"{n}.api-token", t)
    return EtcdTLS(str(d / "ca.pem"), str(d / "etcd.pem"), str(d / "etcd.key"), str(d / "harness.pem"),
                   str(d / "harness.key"), "root", new_password())


def _secret(path: Path, text: str) -> None:
    write_atomic(path, text if text.endswith("\n") else text + "\n", 0o600)


def api_block(root: Path, name: str) -> dict[str, Any]:
    """The `api:` TLS and token fields of node NAME's configuration."""
    d = root / "tls"
    return {"cert_file": str(d / f"{name}-api.pem"), "key_file": str(d / f"{name}-api.key"),
            "tokens_file": str(d / "api-tokens.yaml")}


def admin_block(root: Path) -> dict[str, Any]:
    """The router's `admin:` TLS and token fields."""
    d = root / "tls"
    return {"cert_file": str(d / "router-admin.pem"), "key_file": str(d / "router-admin.key"),
            "tokens_file": str(d / "api-tokens.yaml")}


def api_access(root: Path) -> tuple[ssl.SSLContext, dict[str, str]]:
    """The harness's TLS context and bearer header for agents' and routers' APIs."""
    d = root / "tls"
    return (ssl.create_default_context(cafile=str(d / "ca.pem")),
            {"Authorization": f"Bearer {(d / 'harness.api-token').read_text().strip()}"})


def etcd_block(root: Path, endpoints: list[str], name: str) -> dict[str, Any]:
    """The `etcd:` block of NAME's configuration (a node, or `router`)."""
    d = root / "tls"
    return {"endpoints": endpoints, "ca_file": str(d / "ca.pem"), "cert_file": str(d / f"{name}.pem"),
            "key_file": str(d / f"{name}.key"), "user": name, "password_file": str(d / f"{name}.password")}


def gateway_args(root: Path) -> list[str]:
    d = root / "tls"
    return ["--etcd-ca", str(d / "ca.pem"), "--etcd-cert", str(d / "gateway.pem"),
            "--etcd-key", str(d / "gateway.key"), "--etcd-user", "gateway",
            "--etcd-password-file", str(d / "gateway.password")]


def enable(etcd: EtcdCluster, root: Path, cluster: str, nodes: list[str]) -> None:
    """Create the users and roles and turn etcd auth on (once, at lab start)."""
    tls = etcd.tls
    assert tls is not None
    d = root / "tls"
    users = {n: ("agent", (d / f"{n}.password").read_text().strip()) for n in nodes}
    users |= {u: (kind, (d / f"{u}.password").read_text().strip()) for u, kind in SERVICE_USERS.items()}

    async def go() -> None:
        store = EtcdStore(etcd.endpoints, 5.0, tls.ca, tls.client_cert, tls.client_key)
        try:
            await enable_auth(store, cluster, users, tls.password)
        finally:
            await store.close()
    asyncio.run(go())


def harness_token(etcd: EtcdCluster, endpoint: str) -> dict[str, str]:
    """Headers for the harness's own plain requests to `endpoint` ({} on a plain lab)."""
    tls = etcd.tls
    if tls is None:
        return {}
    body = json.dumps({"name": tls.user, "password": tls.password}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/v3/auth/authenticate", data=body),
                                timeout=1.0, context=tls.context()) as r:
        return {"Authorization": json.load(r)["token"]}
