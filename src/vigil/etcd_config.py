"""The `etcd:` block of a node's or a router's configuration: endpoints, TLS
files and credentials, validated like the rest (field, value, fix), and the
rule that etcd credentials never cross the network in cleartext."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from vigil.errors import ConfigError
from vigil.fields import check_mapping, check_name
from vigil.files import check_secret, read_secret


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None  # etcd auth (roles: docs/operations.md)
    password: str | None = field(default=None, repr=False)
    # The etcd member on this node's machine, if any: while this node leads, etcd's raft
    # leader is moved off it (vigil.store.raft_leader).
    local_member: str | None = None

    def store(self, timeout: float):
        """An EtcdStore for these endpoints, TLS files and credentials."""
        from vigil.store.etcd import EtcdStore

        return EtcdStore(list(self.endpoints), timeout, self.ca_file, self.cert_file, self.key_file,
                         self.user, self.password)


def check_etcd_auth(endpoints: list[str] | tuple[str, ...], user: str | None, field: str) -> None:
    """Refuse etcd credentials sent to an http:// endpoint (the password, then every
    token, would cross the network in cleartext). Raises ConfigError."""
    plain = [e for e in endpoints if not str(e).startswith("https://")]
    if user and plain:
        raise ConfigError(field, user, f"etcd auth over {plain[0]} would send the password and every token "
                                       "in cleartext: use https:// endpoints (with the etcd CA), or no etcd user")


def parse_etcd(v: Any, base: Path = Path(".")) -> EtcdConfig:
    """The `etcd:` block of a node's or a router's file. Raises ConfigError."""
    d = check_mapping(v, "etcd", {"endpoints", "ca_file", "cert_file", "key_file", "user", "password_file",
                                  "local_member"})
    eps = d.get("endpoints")
    if isinstance(eps, str):
        eps = [eps]
    if not isinstance(eps, list) or not eps:
        raise ConfigError("etcd.endpoints", eps, "list at least one URL such as http://127.0.0.1:2379")
    for i, ep in enumerate(eps):
        u = urlparse(str(ep))
        if u.scheme not in ("http", "https") or not u.hostname or u.port is None:
            raise ConfigError(f"etcd.endpoints[{i}]", ep, "must be http(s)://HOST:PORT")
    tls = {k: d.get(k) for k in ("ca_file", "cert_file", "key_file")}
    for k, f in tls.items():
        if f is not None and not Path(str(f)).is_file():
            raise ConfigError(f"etcd.{k}", f, "file not found; give the path of a PEM file")
    if tls["key_file"]:
        check_secret(str(tls["key_file"]), "etcd.key_file")
    if any(str(e).startswith("https") for e in eps) and not tls["ca_file"]:
        raise ConfigError("etcd.ca_file", None, "https endpoints need ca_file (the etcd CA certificate)")
    if ("user" in d) != ("password_file" in d):
        raise ConfigError("etcd.user", d.get("user"), "give both etcd.user and etcd.password_file "
                                                      "(etcd auth), or neither")
    user = check_name(d, "user", "etcd.user") if "user" in d else None
    check_etcd_auth(eps, user, "etcd.user")
    password = read_secret(base / str(d["password_file"]), "etcd.password_file") if "password_file" in d \
        else None
    local = check_name(d, "local_member", "etcd.local_member") if "local_member" in d else None
    return EtcdConfig(tuple(str(e) for e in eps), **tls, user=user, password=password, local_member=local)
