"""Network namespaces for system tests: one namespace per node on a bridge
(in its own switch namespace), plus a client namespace for the harness, all
on 10.231.0.0/24; partitions and packet loss with nftables on the bridge, so
neither end sees an error (a cut cable, not a firewall).

Nothing touches the root namespace. `destroy()` deletes every namespace it
made (the veths and bridge go with them); processes started inside must be
stopped by the caller first.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

SUBNET = "10.231.0"
CLIENT = 100
VIP = f"{SUBNET}.200/24"  # the lab's virtual IP, on whichever node leads


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


def _nft(ns: str, rules: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, check=True,
                   capture_output=True, text=True, timeout=20)


@dataclass
class NetTopology:
    nodes: int
    tag: str = field(default_factory=lambda: f"v{os.getpid() % 100000}")
    made: list[str] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"{self.tag}-sw"

    @property
    def client(self) -> str:
        return f"{self.tag}-c"

    @property
    def client_host(self) -> str:
        """The harness's address: the lab's BMCs and actuator listen here."""
        return self.host(CLIENT)

    def ns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    @staticmethod
    def host(i: int) -> str:
        return f"{SUBNET}.{i}"

    def create(self) -> "NetTopology":
        try:
            self._add(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, ns in [(i, self.ns(i)) for i in range(1, self.nodes + 1)] + [(CLIENT, self.client)]:
                self._add(ns)
                _ip("-n", self.switch, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
                    "netns", ns)
                _ip("-n", self.switch, "link", "set", f"p{i}", "master", "br0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "addr", "add", f"{self.host(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.made.append(ns)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                       capture_output=True, timeout=10)

    def partition(self, *sides: list[int]) -> None:
        """Drop every packet between nodes on different sides, both ways, on the
        bridge (the client, the management network, stays connected to all)."""
        pairs = [(a, b) for i, x in enumerate(sides) for y in sides[i + 1:] for a in x for b in y]
        rules = "\n".join(f"    ip saddr {self.host(a)} ip daddr {self.host(b)} drop\n"
                          f"    ip saddr {self.host(b)} ip daddr {self.host(a)} drop"
                          for a, b in pairs)
        _nft(self.switch, "table bridge vigil_partition {\n  chain forward {\n"
                          "    type filter hook forward priority 0; policy accept;\n" + rules + "\n  }\n}\n")

    def loss(self, node: int, percent: int) -> None:
        """Drop `percent` % of the packets to and from one node."""
        h = self.host(node)
        _nft(self.switch, "table bridge vigil_loss {\n  chain forward {\n"
                          "    type filter hook forward priority 0; policy accept;\n"
                          f"    ip saddr {h} numgen random mod 100 < {percent} drop\n"
                          f"    ip daddr {h} numgen random mod 100 < {percent} drop\n  }}\n}}\n")

    def heal(self) -> None:
        for table in ("vigil_partition", "vigil_loss"):
            subprocess.run(["ip", "netns", "exec", self.switch, "nft", "delete", "table", "bridge", table],
                           capture_output=True, timeout=10)

    def destroy_all(self) -> None:
        """Delete every namespace of this tag, also those a different process made."""
        self.made = [self.switch, *(self.ns(i) for i in range(1, self.nodes + 1)), self.client]
        self.destroy()

    def destroy(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self.made.clear()
