"""`vigil firewall render`: an nftables ruleset for one node that lets only
the cluster reach its etcd (client and peer ports), every port on it that
receives heartbeats (the agent's, and the observer port of a router on the
node: the one its agent runs, and any observer listed at one of the node's
addresses) and its agent API (the seed's "nftables restricting 2379/2380 to
the cluster"). Address rules stop strangers cheaply; a stranger who spoofs a
cluster address still costs the receivers only a parse per packet
(vigil.net.transport).

The cluster is every address the node's configuration names (its own
heartbeat addresses, its peers', its observers' (routers), its etcd
endpoints' hosts) plus `allow` (operators' workstations, load balancers
that probe /health: they must be listed). Loopback is always allowed. The
table is its own (`inet vigil_firewall`): applying it replaces only it, and
`nft delete table inet vigil_firewall` removes it. Other ports are left
alone (policy accept): this guards Vigil's ports, it is not a host firewall.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from vigil.config import NodeConfig
from vigil.errors import ConfigError

TABLE = "vigil_firewall"


def cluster_sources(cfg: NodeConfig, allow: list[str]) -> list[str]:
    """Every network allowed in, as nftables elements, sorted. Raises ConfigError."""
    hosts = [*cfg.addresses, *(a for p in cfg.peers for a in p.addresses),
             *(o.address for o in cfg.observers), *(urlsplit(e).hostname or "" for e in cfg.etcd.endpoints)]
    nets = set()
    for h in [*hosts, *allow]:
        try:
            nets.add(ipaddress.ip_network(h, strict=False))
        except ValueError:
            raise ConfigError("--allow" if h in allow else "etcd.endpoints", h,
                              "must be an address or network (host names are not resolved here)") from None
    return [str(n) for n in sorted(nets, key=lambda n: (n.version, n))]


def heartbeat_ports(cfg: NodeConfig) -> list[int]:
    """Every UDP port on this node that receives heartbeats. Raises ConfigError
    (an unreadable router configuration)."""
    ports = {cfg.heartbeat_port, *(o.port for o in cfg.observers if o.address in cfg.addresses)}
    if cfg.router_config:
        from vigil.router.config import load_router_config  # only nodes that run a router need it
        ports.add(load_router_config(cfg.router_config).heartbeat_port)
    return sorted(ports)


def render(cfg: NodeConfig, allow: list[str], etcd_peer_ports: list[int], extra_tcp: list[int] = ()) -> str:
    """The ruleset, as `nft -f` reads it."""
    nets = cluster_sources(cfg, allow)
    tcp = sorted({cfg.api_port, *(urlsplit(e).port or 2379 for e in cfg.etcd.endpoints),
                  *etcd_peer_ports, *extra_tcp})
    v4 = [n for n in nets if ipaddress.ip_network(n).version == 4]
    v6 = [n for n in nets if ipaddress.ip_network(n).version == 6]
    sets = "".join(f"  set cluster_{fam} {{\n    type {fam}_addr; flags interval;\n"
                   f"    elements = {{ {', '.join(ns)} }}\n  }}\n"
                   for fam, ns in (("ipv4", v4), ("ipv6", v6)) if ns)
    accepts = "".join(f"    {'ip' if fam == 'ipv4' else 'ip6'} saddr @cluster_{fam} accept\n"
                      for fam, ns in (("ipv4", v4), ("ipv6", v6)) if ns)
    return (f"# vigil firewall for {cfg.node} of cluster {cfg.cluster}: only the cluster reaches\n"
            f"# etcd, heartbeats and the agent API. Apply: nft -f FILE; remove: nft delete table inet {TABLE}\n"
            f"table inet {TABLE}\n"
            f"delete table inet {TABLE}\n"
            f"table inet {TABLE} {{\n{sets}"
            f"  chain input {{\n    type filter hook input priority filter; policy accept;\n"
            f"    iif \"lo\" accept\n{accepts}"
            f"    tcp dport {{ {', '.join(map(str, tcp))} }} counter drop comment \"vigil: cluster only\"\n"
            f"    udp dport {{ {', '.join(map(str, heartbeat_ports(cfg)))} }} counter drop "
            f"comment \"vigil heartbeats: cluster only\"\n"
            f"  }}\n}}\n")
