"""Run inside the client namespace of a NetTopology(3) (see test_vip.py): a
lab whose leader holds a VIP on its eth0, in front of a router on every
node (each run by its node's agent) and a model server on every node.
Every 20 ms, which node namespaces hold the address (on a link that is up);
every 100 ms, which MACs answer ARP for it seen from the client; and a
steady stream of client requests to http://VIP:PORT (one every 20 ms, a new
connection each, 1 s timeout), each noting which router answered. Faults:
SIGKILL of the holder's agent, SIGSTOP of it for 2 x TTL, the holder cut off
from the other nodes, and `vigil lab kill` of the holder (agent, router,
model server). Then another host (the client) holds the address while a
switchover moves leadership: the VIP does not start and `vigil diagnose`
names why. Prints one JSON document."""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import subprocess
import sys
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
        """Namespaces with the VIP on an eth0 that is up (a link down answers nothing)."""
        return [name for name, ns in self.ns.items()
                if any(a.get_attr("IFA_ADDRESS") == ADDR for a in ns.get_addr())
                and ns.get_links(ifname="eth0")[0].get_attr("IFLA_OPERSTATE") != "DOWN"]

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


class Stream:
    """The client: GET /v1/models at the VIP every 20 ms; (time, status or error, router)."""

    def __init__(self, port: int):
        self.port, self.log = port, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            t = time.monotonic()
            c = http.client.HTTPConnection(ADDR, self.port, timeout=1.0)
            try:
                c.request("GET", "/v1/models")
                r = c.getresponse()
                r.read()
                self.log.append((t, r.status, r.getheader("X-Vigil-Router") or ""))
            except OSError as e:
                self.log.append((t, type(e).__name__, ""))
            finally:
                c.close()

    def after(self, t0: float) -> list[tuple[float, object, str]]:
        return [x for x in list(self.log) if x[0] >= t0]

    def resumed(self, t0: float, old: str) -> float | None:
        """Seconds from t0 to the first answer from a router other than `old`'s."""
        return next((round(t - t0, 3) for t, st, r in self.after(t0) if st == 200 and r != f"router-{old}"),
                    None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


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


def foreign_holder(lab: Lab, w: Watcher, root: str) -> dict:
    """Pacemaker's "Resource Start Fail", for real: another host (this client) holds the
    VIP when a switchover moves leadership. The new leader's duplicate probe refuses
    the address (`resource_start_failed`), `vigil diagnose` names that first, and the
    VIP starts by itself once the address is free."""
    old = settle(lab, w)
    to = sorted(n.name for n in lab.nodes if n.name != old)[0]
    t0 = time.time()
    subprocess.run(["ip", "addr", "add", VIP, "dev", "eth0"], check=True)
    try:
        subprocess.run([sys.executable, "-m", "vigil", "switchover", "--to", to, "--lab", root],
                       check=True, capture_output=True, timeout=60)
        lab.wait_for(lambda: [e for e in lab.events() if e["kind"] == "resource_start_failed"
                              and e["node"] == to and e["at"] >= t0], 30, f"the VIP failing to start on {to}")
        d = subprocess.run([sys.executable, "-m", "vigil", "diagnose", "--lab", root, "--json", "--limit", "0",
                            "--kernel-log", "/dev/null"], capture_output=True, text=True, timeout=60)
        assert d.returncode in (0, 1), d.stderr
        top = json.loads(d.stdout)["findings"][0]
        holders_while = w.holders()
    finally:
        gone = subprocess.run(["ip", "addr", "del", VIP, "dev", "eth0"], capture_output=True, text=True)
        if gone.returncode != 0:  # say it, without hiding the error that brought us here
            print(f"vip_run: could not remove {VIP} from the client: {gone.stderr.strip()}", file=sys.stderr)
    lab.wait_for(lambda: w.holders() == [to], 60, f"{to} holding the VIP once it is free")
    return {"to": to, "symptom": top["symptom"], "fix": top["fix"], "exit": d.returncode,
            "holders_while": holders_while}


def main() -> None:
    a = argparse.ArgumentParser()
    a.add_argument("--tag", required=True)
    a.add_argument("--dir", required=True)
    args = a.parse_args()
    net = NetTopology(3, tag=args.tag)
    lab = Lab.up(Path(args.dir), 3, net=net, vip=VIP, model=True, router=True)
    out: dict = {}
    w = Watcher(lab)
    stream = Stream(lab.front.port)
    try:
        for fault in ("kill_node", "kill_agent", "stop_agent", "partition"):
            old = settle(lab, w)
            t0 = time.monotonic()
            if fault == "kill_node":  # the operator's command, as documented
                subprocess.run([sys.executable, "-m", "vigil", "lab", "kill", "--dir", args.dir, "--node", old],
                               check=True, capture_output=True, timeout=30)
            elif fault == "kill_agent":
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
            if fault in ("kill_agent", "kill_node"):
                lab.start_agent(old)
            lab.wait_for(lab.ready, 30, "the cluster whole again")
            holder = settle(lab, w)
            t_after = time.monotonic()
            lab.wait_for(lambda: len([x for x in stream.after(t_after) if x[1] == 200]) >= 5, 15,
                         "the stream answered after the fault")
            out[fault] = {"resumed_s": stream.resumed(t0, old),
                          "failed": sum(1 for x in stream.after(t0) if x[0] < t_after and x[1] != 200),
                          "routers_after": sorted({x[2] for x in stream.after(t_after) if x[1] == 200}),
                          "holder_router": f"router-{holder}",
                          "old": old, "new": new, "gone_s": round(t_gone, 3), "new_holder_s": round(t_new, 3),
                          "holder_after": holder, "holder_mac": w.mac(holder),
                          "answering_after": sorted(arp.who_has("eth0", ADDR, 0.3)),
                          "client_cache": client_cache()}
        out["foreign_holder"] = foreign_holder(lab, w, args.dir)
    finally:
        stream.stop()
        w.stop()
        net.heal()
        lab.down()
    out.update(max_holders=w.max_holders, max_arp_answers=w.max_answering, samples=w.samples,
               requests=len(stream.log), answered=sum(1 for x in stream.log if x[1] == 200))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
