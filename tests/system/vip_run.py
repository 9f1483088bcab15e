"""Run inside the client namespace of a NetTopology(3) (see test_vip.py): a
lab whose leader holds a VIP on its eth0; every 20 ms, which node
namespaces hold the address, and every 100 ms which MACs answer ARP for it
seen from the client. Faults: SIGKILL of the holder's agent, SIGSTOP of it
for 2 x TTL, the holder cut off from the other nodes. Prints one JSON document."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

from vigil.lab import Lab
from vigil.lab.netns import NetTopology
from vigil.resources import arp

VIP = "10.231.0.200/24"
ADDR = VIP.split("/")[0]


class Watcher:
    """Samples holders (ip addr in every namespace) and ARP answers (from the client)."""

    def __init__(self, lab: Lab):
        from pyroute2 import NetNS

        self.lab = lab
        self.ns = {n.name: NetNS(n.netns) for n in lab.nodes}
        self.max_holders = 0
        self.max_answering = 0
        self.samples = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._addr_loop, daemon=True),
                         threading.Thread(target=self._arp_loop, daemon=True)]
        for t in self._threads:
            t.start()

    def holders(self) -> list[str]:
        return [name for name, ns in self.ns.items()
                if any(a.get_attr("IFA_ADDRESS") == ADDR for a in ns.get_addr())]

    def _addr_loop(self) -> None:
        while not self._stop.wait(0.02):
            self.max_holders = max(self.max_holders, len(self.holders()))
            self.samples += 1

    def _arp_loop(self) -> None:
        while not self._stop.wait(0.1):
            self.max_answering = max(self.max_answering, len(arp.who_has("eth0", ADDR, 0.05)))

    def mac(self, name: str) -> str:
        link = self.ns[name].get_links(ifname="eth0")[0]
        return link.get_attr("IFLA_ADDRESS")

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for ns in self.ns.values():
            ns.close()


def client_cache() -> str | None:
    """The MAC the client's own ARP cache maps the VIP to, after sending it a datagram."""
    import socket

    from pyroute2 import IPRoute

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", (ADDR, 9))
    with IPRoute() as ipr:
        for n in ipr.get_neighbours(dst=ADDR):
            return n.get_attr("NDA_LLADDR")
    return None


def settle(lab: Lab, w: Watcher) -> str:
    leader = lab.wait_for(lambda: lab.leader(), 30, "a leader")[0]
    lab.wait_for(lambda: w.holders() == [leader], 15, f"{leader} alone holding the VIP")
    return leader


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--tag", required=True)
    a.add_argument("--dir", required=True)
    args = a.parse_args()
    net = NetTopology(3, tag=args.tag)
    lab = Lab.up(Path(args.dir), 3, net=net, vip=VIP)
    out: dict = {}
    w = Watcher(lab)
    try:
        for fault in ("kill_agent", "stop_agent", "partition"):
            old = settle(lab, w)
            t0 = time.monotonic()
            if fault == "kill_agent":
                lab.signal_agent(old, signal.SIGKILL)
            elif fault == "stop_agent":
                lab.signal_agent(old, signal.SIGSTOP)
            else:
                i = [n.name for n in lab.nodes].index(old) + 1
                net.partition([i], [j for j in (1, 2, 3) if j != i])
            lab.wait_for(lambda: old not in w.holders(), 15, f"{old} to lose the VIP")
            t_gone = time.monotonic() - t0
            new = lab.wait_for(lambda: (lambda h: h[0] if h and h[0] != old else None)(w.holders()), 30,
                               "another node to hold the VIP")
            t_new = time.monotonic() - t0
            if fault == "stop_agent":
                lab.wait_for(lambda: time.monotonic() - t0 >= 4.0, 10, "2 x TTL frozen")
                lab.signal_agent(old, signal.SIGCONT)
            if fault == "partition":
                net.heal()
            if fault == "kill_agent":
                lab.start_agent(old)
            lab.wait_for(lab.ready, 30, "the cluster whole again")
            holder = settle(lab, w)
            out[fault] = {"old": old, "new": new, "gone_s": round(t_gone, 3), "new_holder_s": round(t_new, 3),
                          "holder_after": holder, "holder_mac": w.mac(holder),
                          "answering_after": sorted(arp.who_has("eth0", ADDR, 0.3)),
                          "client_cache": client_cache()}
    finally:
        w.stop()
        net.heal()
        lab.down()
    out.update(max_holders=w.max_holders, max_arp_answers=w.max_answering, samples=w.samples)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
