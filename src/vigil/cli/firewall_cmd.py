"""`vigil firewall render --config FILE`: print the node's nftables ruleset (vigil.firewall)."""

from __future__ import annotations

from vigil.config import load_config
from vigil.firewall import render


def register(sub) -> None:
    p = sub.add_parser("firewall", help="nftables rules that keep Vigil's ports to the cluster")
    s = p.add_subparsers(dest="firewall_command", metavar="ACTION", required=True)
    r = s.add_parser("render", help="print the ruleset for one node (apply with `nft -f`)")
    r.add_argument("--config", required=True, help="the node's YAML configuration file")
    r.add_argument("--allow", action="append", default=[], metavar="CIDR",
                   help="another address or network to let in (operators, load balancers); repeat")
    r.add_argument("--etcd-peer-port", type=int, action="append", default=None, metavar="PORT",
                   help="the local etcd member's peer port (default 2380); repeat")
    r.add_argument("--tcp-port", type=int, action="append", default=[], metavar="PORT",
                   help="another TCP port to keep to the cluster; repeat")
    r.set_defaults(func=_render)


def _render(args) -> int:
    cfg = load_config(args.config)
    print(render(cfg, args.allow, args.etcd_peer_port or [2380], args.tcp_port), end="")
    return 0
