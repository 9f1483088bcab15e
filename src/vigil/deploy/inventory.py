"""The inventory `vigil init` reads: one YAML file describing a whole cluster.

    cluster: prod
    nodes:                         # every machine that runs an agent
      - name: n1
        address: 10.0.0.1          # heartbeats, agent API, router admin, etcd peer and client
        etcd: true                 # runs an etcd voter (an odd number of nodes do)
        failure_domain: rack-1     # optional; recorded in the bundle (placement: issue 24)
        priority: 100              # optional; higher leads first (default: by order)
        bmc: {address: 10.0.1.1, user: admin, password_file: bmc-n1.password}   # optional
    vips: [{address: 10.0.0.100/24, interface: eth0}]
    inference:                     # optional: each node's model server, run by its agent
      url: "http://{address}:8000"
      command: ["/opt/model/bin/serve", "--host", "{address}", "--port", "8000"]
      user: vigil                  # never root
      canary_path: /v1/completions # and any other field of a node file's inference block
    timing: {...}                  # optional; default: the fast profile below
    ports: {api: 7400, heartbeat: 7401, router: 8080, router_admin: 8081,
            router_heartbeat: 7402, etcd_client: 2379, etcd_peer: 2380}
    etcd_endpoints: [https://...]  # optional: an existing etcd instead of voters on the nodes

Contract: `parse_inventory` returns an Inventory or raises ConfigError naming
the field, the value and the fix. An even number of etcd voters is refused:
it tolerates no more failures than one voter fewer, and two halves of a split
both lose quorum (etcd's odd-quorum rule); workers are not voters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.errors import ConfigError
from vigil.fields import check_address, check_int, check_mapping, check_name, check_port
from vigil.files import read_yaml

# Lease 2 s: a crashed leader's lease ends within 2 s and the VIP moves within 3. No whole-second
# hardware watchdog timeout fits inside it (watchdog `automatic` then leads without one and says
# so); a machine with a watchdog can take `timing: {lease_ttl: 3, demote_after: 1.6, ...}`.
FAST_TIMING = {"heartbeat_interval": 0.1, "lease_ttl": 2, "keepalive_interval": 0.5,
               "demote_after": 1.6, "etcd_timeout": 0.5, "loop_interval": 0.5}
# Names a node may not have: files and folders of `vigil init`'s output and the service users.
RESERVED = {"secrets", "admin", "retired", "ca", "continue", "root", "router", "gateway", "operator"}
PORTS = {"api": 7400, "heartbeat": 7401, "router_heartbeat": 7402, "router": 8080, "router_admin": 8081,
         "etcd_client": 2379, "etcd_peer": 2380}


@dataclass(frozen=True)
class Bmc:
    address: str
    user: str
    password_file: str


@dataclass(frozen=True)
class NodeSpec:
    name: str
    address: str
    etcd: bool = False
    failure_domain: str | None = None
    priority: int = 100
    bmc: Bmc | None = None


@dataclass(frozen=True)
class Inventory:
    cluster: str
    nodes: tuple[NodeSpec, ...]
    vips: tuple[dict[str, str], ...] = ()
    inference: dict[str, Any] | None = None
    timing: dict[str, Any] = field(default_factory=lambda: dict(FAST_TIMING))
    ports: dict[str, int] = field(default_factory=lambda: dict(PORTS))
    etcd_endpoints: tuple[str, ...] = ()  # an existing etcd; else the voters'

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError("--node", name, f"is not in the inventory (nodes: "
                                          f"{', '.join(n.name for n in self.nodes)}): add it there first")

    @property
    def voters(self) -> tuple[NodeSpec, ...]:
        return tuple(n for n in self.nodes if n.etcd)

    def endpoints(self) -> list[str]:
        if self.etcd_endpoints:
            return list(self.etcd_endpoints)
        return [f"https://{host(n.address)}:{self.ports['etcd_client']}" for n in self.voters]


def host(address: str) -> str:
    """`address` as the host part of a URL (an IPv6 one in brackets)."""
    return f"[{address}]" if ":" in address else address


def load_inventory(path: str | Path) -> Inventory:
    """Read and check an inventory file. Raises ConfigError."""
    return parse_inventory(read_yaml(path), Path(path).parent)


def parse_inventory(doc: Any, base: Path = Path(".")) -> Inventory:
    d = check_mapping(doc, "(top level)", {"cluster", "nodes", "vips", "inference", "timing", "ports",
                                           "etcd_endpoints"})
    cluster = check_name(d, "cluster")
    raw = d.get("nodes")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("nodes", raw, "list the machines: - {name: n1, address: 10.0.0.1, etcd: true}")
    nodes = tuple(_node(n, i, base) for i, n in enumerate(raw))
    _unique(nodes)
    ports = {**PORTS, **_ports(d.get("ports", {}))}
    eps = d.get("etcd_endpoints", [])
    if not isinstance(eps, list) or not all(isinstance(e, str) and e.startswith("https://") for e in eps):
        raise ConfigError("etcd_endpoints", eps, "list https:// URLs of an existing etcd, or leave it out")
    inv = Inventory(cluster, nodes, _vips(d.get("vips", [])), _inference(d.get("inference")),
                    {**FAST_TIMING, **check_mapping(d.get("timing", {}), "timing", set(FAST_TIMING) | {
                        "phi_threshold", "min_std_deviation", "acceptable_pause", "rise", "heartbeat_copies",
                        "copy_spacing"})}, ports, tuple(eps))
    _check_voters(inv)
    return inv


def _node(v: Any, i: int, base: Path) -> NodeSpec:
    where = f"nodes[{i}]"
    d = check_mapping(v, where, {"name", "address", "etcd", "failure_domain", "priority", "bmc"})
    name = check_name(d, "name", f"{where}.name")
    if name.startswith("router-"):
        raise ConfigError(f"{where}.name", name, "is the name of a router's etcd user: name nodes n1, gpu-07, ...")
    if name in RESERVED or name.endswith("-api") or name.startswith("etcd-"):
        raise ConfigError(f"{where}.name", name, "is taken by a file or folder of `vigil init` (secrets/, admin/, "
                                                 "ca.key, continue.key, NODE-api.*, etcd-NODE.*): name nodes "
                                                 "n1, gpu-07, ...")
    etcd = d.get("etcd", False)
    if not isinstance(etcd, bool):
        raise ConfigError(f"{where}.etcd", etcd, "must be true (an etcd voter runs here) or false")
    domain = check_name(d, "failure_domain", f"{where}.failure_domain") if "failure_domain" in d else None
    bmc = None
    if "bmc" in d:
        b = check_mapping(d["bmc"], f"{where}.bmc", {"address", "user", "password_file"})
        pw = b.get("password_file")
        if not isinstance(pw, str) or not _is_file(base, pw):
            raise ConfigError(f"{where}.bmc.password_file", pw, "name a file holding the BMC password "
                                                                "(relative to the inventory)")
        bmc = Bmc(check_address(b.get("address"), f"{where}.bmc.address"),
                  check_name(b, "user", f"{where}.bmc.user"), str((base / pw).resolve()))
    return NodeSpec(name, check_address(d.get("address"), f"{where}.address"), etcd, domain,
                    check_int(d.get("priority", 100 - i), f"{where}.priority", 0, 1000), bmc)


def _is_file(base: Path, name: str) -> bool:
    try:
        return (base / name).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _unique(nodes: tuple[NodeSpec, ...]) -> None:
    for key in ("name", "address"):
        seen: set[str] = set()
        for n in nodes:
            v = getattr(n, key)
            if v in seen:
                raise ConfigError(f"nodes.{key}", v, f"appears twice: every node has its own {key}")
            seen.add(v)


def _check_voters(inv: Inventory) -> None:
    voters = len(inv.voters)
    if inv.etcd_endpoints:
        if voters:
            raise ConfigError("nodes.etcd", voters, "etcd_endpoints names an existing etcd: mark no node "
                                                    "`etcd: true`, or leave etcd_endpoints out")
        return
    if voters == 0:
        raise ConfigError("nodes.etcd", 0, "no node runs etcd: mark 1, 3 or 5 nodes `etcd: true`, or name an "
                                           "existing etcd in etcd_endpoints")
    if voters % 2 == 0:
        raise ConfigError("nodes.etcd", voters, f"{voters} etcd voters tolerate no more failures than "
                                                f"{voters - 1} and a split in two halves leaves neither a "
                                                f"quorum: mark {voters - 1} or {voters + 1} nodes `etcd: true` "
                                                "(the others are workers, not voters)")


def _ports(v: Any) -> dict[str, int]:
    d = check_mapping(v, "ports", set(PORTS))
    return {k: check_port(p, f"ports.{k}") for k, p in d.items()}


def _vips(v: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(v, list):
        raise ConfigError("vips", v, "must be a list of {address: 10.0.0.100/24, interface: eth0}")
    out = []
    for i, x in enumerate(v):
        d = check_mapping(x, f"vips[{i}]", {"address", "interface"})
        addr, iface = d.get("address"), d.get("interface")
        if not isinstance(addr, str) or "/" not in addr or ":" in addr:
            raise ConfigError(f"vips[{i}].address", addr, "must be an IPv4 ADDRESS/PREFIX such as 10.0.0.100/24 "
                                                         "(VIPs are IPv4: gratuitous ARP)")
        check_address(addr.split("/")[0], f"vips[{i}].address")
        if not isinstance(iface, str) or not iface or len(iface) > 15:
            raise ConfigError(f"vips[{i}].interface", iface, "name the interface the VIP goes on, e.g. eth0")
        out.append({"address": addr, "interface": iface})
    return tuple(out)


def _inference(v: Any) -> dict[str, Any] | None:
    if v is None:
        return None
    # Beyond url, command and user, the fields of a node file's `inference:` block pass
    # through as they are (canary_path, canary_body, ...): the node's parser checks them.
    d = check_mapping(v, "inference", {"url", "command", "user", "canary_path", "canary_body", "canary_interval",
                                       "canary_timeout", "rise", "fall", "load_format", "load_path",
                                       "load_interval", "silence_window", "stall_window", "batch_jobs"})
    if not isinstance(d.get("url"), str):
        raise ConfigError("inference.url", d.get("url"), "the model server's URL, e.g. http://{address}:8000")
    cmd = d.get("command")
    if cmd is not None and (not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd)):
        raise ConfigError("inference.command", cmd, "must be a list of strings (the program and its arguments)")
    if cmd is not None and (not isinstance(d.get("user"), str) or d.get("user") in ("root", "0")):
        raise ConfigError("inference.user", d.get("user"), "name the unprivileged user the model server runs "
                                                           "as (never root)")
    return dict(d)
