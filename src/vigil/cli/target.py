"""Which cluster a command talks to: --config FILE, --lab DIR, or
--etcd URLS --cluster NAME (also $VIGIL_ETCD / $VIGIL_CLUSTER)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from vigil.config import load_config
from vigil.errors import ConfigError
from vigil.store.etcd import EtcdStore
from vigil.store.keys import Keys


@dataclass
class Target:
    endpoints: list[str]
    cluster: str
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def store(self) -> EtcdStore:
        return EtcdStore(self.endpoints, 2.0, self.ca, self.cert, self.key)

    @property
    def keys(self) -> Keys:
        return Keys(self.cluster)


def add_target_args(p) -> None:
    g = p.add_argument_group("cluster to talk to (one of)")
    g.add_argument("--config", help="a node's YAML configuration file")
    g.add_argument("--lab", metavar="DIR", help="a lab directory (from `vigil lab up`)")
    g.add_argument("--etcd", help="comma-separated etcd URLs (or $VIGIL_ETCD)")
    g.add_argument("--cluster", help="cluster name (or $VIGIL_CLUSTER)")


def resolve(args) -> Target:
    if args.config:
        cfg = load_config(args.config)
        e = cfg.etcd
        return Target(list(e.endpoints), cfg.cluster, e.ca_file, e.cert_file, e.key_file)
    if args.lab:
        from vigil.lab import Lab

        lab = Lab.load(Path(args.lab))
        return Target(lab.etcd.endpoints, lab.cluster)
    etcd = args.etcd or os.environ.get("VIGIL_ETCD")
    cluster = args.cluster or os.environ.get("VIGIL_CLUSTER")
    if not etcd or not cluster:
        raise ConfigError("--etcd/--cluster", etcd or cluster,
                          "name the cluster: --config FILE, --lab DIR, or both --etcd URLS and "
                          "--cluster NAME")
    return Target([e.strip() for e in etcd.split(",") if e.strip()], cluster)
