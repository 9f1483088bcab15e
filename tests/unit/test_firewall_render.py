"""Review B10: `vigil firewall render` keeps every port on the node that
receives heartbeats to the cluster, not only the agent's: the observer port
of the router its agent runs, and of any observer listed at the node's own
address. The ruleset is checked by nft itself (`nft -c`, applies nothing)."""

from __future__ import annotations

import re
import subprocess
import sys

import yaml

from vigil.config import parse_config
from vigil.testing.keys import heartbeat_keys


def node_config(tmp_path, router: bool):
    keys = heartbeat_keys(tmp_path / "keys", ["n1", "n2"])
    raw = {"cluster": "prod", "node": "n1", "etcd": {"endpoints": ["http://10.0.0.1:2379"]},
           "heartbeat": {**keys["n1"], "addresses": ["10.0.0.1"], "port": 7000,
                         "peers": [{"name": "n2", "addresses": ["10.0.0.2"]}],
                         "observers": [{"address": "10.0.0.1", "port": 7001},  # a router on this node
                                       {"address": "10.0.0.9", "port": 7003}]}}  # one elsewhere: not ours
    if router:
        rc = tmp_path / "router.yaml"
        rc.write_text(yaml.safe_dump({"cluster": "prod", "etcd": {"endpoints": ["http://10.0.0.1:2379"]},
                                      "heartbeat": {"address": "10.0.0.1", "port": 7002, **keys["ring"]}}))
        raw["router"] = {"config": str(rc)}
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw), path


def render(path) -> str:
    return subprocess.run([sys.executable, "-m", "vigil", "firewall", "render", "--config", str(path)],
                          capture_output=True, text=True, check=True, timeout=60).stdout


def udp_ports(rules: str) -> set[int]:
    (ports,) = re.findall(r"udp dport \{? ?([0-9, ]+?) ?\}? counter drop", rules)  # a set, or one port
    return {int(p) for p in ports.split(", ")}


def test_every_heartbeat_port_on_the_node_is_kept_to_the_cluster(tmp_path):
    _, path = node_config(tmp_path, router=True)
    rules = render(path)
    assert udp_ports(rules) == {7000, 7001, 7002}, rules
    check = subprocess.run(["nft", "-c", "-f", "-"], input=rules, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def test_a_node_without_a_router_guards_its_own_port(tmp_path):
    _, path = node_config(tmp_path, router=False)
    assert udp_ports(render(path)) == {7000, 7001}
