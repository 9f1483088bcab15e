"""Run inside the client namespace of a NetTopology(4) (see
test_firewall.py): a lab on nodes 1-3, every node's `vigil firewall render`
ruleset applied in its namespace, then what an outsider (node 4's address)
and the cluster can still do. Prints one JSON document."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from vigil.lab import Lab
from vigil.lab.netns import NetTopology

PROBE = ("import socket, sys\n"
         "try:\n"
         "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5).close(); print('open')\n"
         "except OSError as e:\n"
         "    print(type(e).__name__)\n")


def connect_from(ns: str, host: str, port: int) -> str:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, host, str(port)],
                       capture_output=True, text=True, timeout=30)
    return r.stdout.strip()


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--tag", required=True)
    a.add_argument("--dir", required=True)
    args = a.parse_args()
    net = NetTopology(4, tag=args.tag)  # attached: node 4's namespace is the outsider
    lab = Lab.up(Path(args.dir), 3, net=net)
    out: dict = {}
    try:
        for i, node in enumerate(lab.nodes):
            member = lab.etcd.members[i]
            rules = subprocess.run([sys.executable, "-m", "vigil", "firewall", "render", "--config", node.config,
                                    "--allow", net.client_host, "--etcd-peer-port", str(member.peer_port)],
                                   capture_output=True, text=True, check=True, timeout=60).stdout
            subprocess.run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=rules, check=True,
                           capture_output=True, text=True, timeout=20)
        n1, e1 = lab.nodes[0], lab.etcd.members[0]
        api_port = int(n1.api_url.rsplit(":", 1)[1])
        out["outsider"] = {"etcd": connect_from(net.ns(4), n1.host, e1.client_port),
                           "etcd_peer": connect_from(net.ns(4), n1.host, e1.peer_port),
                           "api": connect_from(net.ns(4), n1.host, api_port)}
        out["allowed"] = {"etcd": connect_from(net.client, n1.host, e1.client_port),
                          "api": connect_from(net.client, n1.host, api_port),
                          "peer_api": connect_from(lab.nodes[1].netns, n1.host, api_port)}
        old, token = lab.leader()
        lab.signal_agent(old, signal.SIGKILL)
        new = lab.wait_for(lambda: (lambda c: c if c and c[0] != old and c[1] > token else None)(lab.leader()),
                           20, "a new leader behind the firewall")
        out["failover"] = {"old": old, "new": new[0]}
        lab.start_agent(old)
        lab.wait_for(lab.ready, 30, "every agent hearing every peer again")
        out["ready_again"] = True
    finally:
        lab.down()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
