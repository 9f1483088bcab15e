"""Which cluster a command talks to: --config FILE, --lab DIR, or
--etcd URLS --cluster NAME (also $VIGIL_ETCD / $VIGIL_CLUSTER), with
--cacert/--cert/--key for TLS and --user/--password-file for etcd auth (as
etcdctl's). https is always verified: against --cacert, else the system CAs."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from vigil.config import load_config
from vigil.etcd_config import check_etcd_auth
from vigil.errors import ConfigError
from vigil.files import read_secret
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys


@dataclass
class Target:
    endpoints: list[str]
    cluster: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    api_token: str | None = None  # bearer token for agents' /status (api.tokens_file)

    @property
    def api(self):
        from vigil.cluster_status import ApiAccess

        return ApiAccess(self.ca, self.api_token)

    @property
    def operator(self) -> str:
        """Who is acting, for the event log: the etcd user, else user@host."""
        if self.user:
            return self.user
        import getpass
        import socket

        return f"{getpass.getuser()}@{socket.gethostname()}"

    def store(self) -> EtcdStore:
        return EtcdStore(self.endpoints, 2.0, self.ca, self.cert, self.key, self.user, self.password)

    def run(self, fn: Callable[[EtcdStore], Awaitable[Any]]) -> Any:
        """`fn(store)` on a fresh store client, closed after; its result."""
        async def main() -> Any:
            store = self.store()
            try:
                return await fn(store)
            finally:
                await store.close()
        return asyncio.run(main())

    @property
    def keys(self) -> Keys:
        return Keys(self.cluster)


def add_target_args(p) -> None:
    g = p.add_argument_group("cluster to talk to (one of)")
    g.add_argument("--config", help="a node's YAML configuration file")
    g.add_argument("--target", help="an operator's target file: cluster, etcd, api_token_file (`vigil init` "
                                    "writes /etc/vigil/operator.yaml; or $VIGIL_TARGET)")
    g.add_argument("--lab", metavar="DIR", help="a lab directory (from `vigil lab up`)")
    g.add_argument("--etcd", help="comma-separated etcd URLs (or $VIGIL_ETCD)")
    g.add_argument("--cluster", help="cluster name (or $VIGIL_CLUSTER)")
    t = p.add_argument_group("TLS and etcd auth (with --etcd)")
    t.add_argument("--cacert", help="CA certificate that signed etcd's (https is always verified)")
    t.add_argument("--cert", help="client certificate")
    t.add_argument("--key", help="its private key")
    t.add_argument("--user", help="etcd user (e.g. operator)")
    t.add_argument("--password-file", help="that user's password, in a root-only file")
    t.add_argument("--api-token-file", help="a bearer token for the agents' /status (root-only file)")


def resolve(args) -> Target:
    target = getattr(args, "target", None) or (None if args.config or args.lab or args.etcd
                                               else os.environ.get("VIGIL_TARGET"))
    if target:
        return _target_file(target)
    if args.config:
        cfg = load_config(args.config)
        e = cfg.etcd
        return Target(list(e.endpoints), cfg.cluster, e.ca_file, e.cert_file, e.key_file, e.user, e.password,
                      _token(args) or (cfg.api_tokens or {}).get("operator"))
    if args.lab:
        return _lab_target(Path(args.lab))
    etcd = args.etcd or os.environ.get("VIGIL_ETCD")
    cluster = args.cluster or os.environ.get("VIGIL_CLUSTER")
    if not etcd or not cluster:
        raise ConfigError("--etcd/--cluster" if etcd or cluster else "the cluster", (etcd or cluster) or None,
                          "name the cluster: --config FILE, --lab DIR, or both --etcd URLS and "
                          "--cluster NAME")
    endpoints = [e.strip() for e in etcd.split(",") if e.strip()]
    check_etcd_auth(endpoints, args.user, "--user")
    password = read_secret(args.password_file, "--password-file") if args.password_file else None
    if bool(args.user) != bool(password):
        raise ConfigError("--user", args.user, "give --user and --password-file together")
    return Target(endpoints, cluster, args.cacert, args.cert, args.key, args.user, password, _token(args))


def _target_file(path: str) -> Target:
    """An operator's target file: `cluster`, an `etcd:` block as a node's, and
    optionally `api_token_file`. Raises ConfigError."""
    from vigil.etcd_config import parse_etcd
    from vigil.fields import check_mapping, check_name
    from vigil.files import read_yaml

    d = check_mapping(read_yaml(path), path, {"cluster", "etcd", "api_token_file"})
    base = Path(path).parent
    e = parse_etcd(d.get("etcd"), base)
    token = read_secret(base / str(d["api_token_file"]), "api_token_file") if "api_token_file" in d else None
    return Target(list(e.endpoints), check_name(d, "cluster"), e.ca_file, e.cert_file, e.key_file, e.user,
                  e.password, token)


def _token(args) -> str | None:
    return read_secret(args.api_token_file, "--api-token-file") if args.api_token_file else None


def _lab_target(root: Path) -> Target:
    """A lab's etcd; on a secure lab, as its operator (lab.json names the files)."""
    from vigil.lab import Lab

    lab = Lab.load(root)
    doc = json.loads((lab.root / "lab.json").read_text())
    if "ca" not in doc:
        return Target(lab.etcd.endpoints, lab.cluster)
    return Target(lab.etcd.endpoints, lab.cluster, doc["ca"], doc["operator_cert"], doc["operator_key"],
                  doc["operator_user"], read_secret(doc["operator_password_file"], "lab.json"),
                  read_secret(doc["api_token_file"], "lab.json"))
