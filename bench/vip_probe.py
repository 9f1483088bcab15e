"""What bench/vip.py measures with, the same for every system under test:

- `VipSystem`: the protocol each system (keepalived, Vigil) implements on a
  NetTopology(3) whose nodes are 1..3 and whose VIP is `VIP`.
- A responder: a tiny HTTP server on 0.0.0.0:8080 in every node namespace,
  answering its node name ("n1"); it belongs to the harness, not to the
  system, so both systems are measured on the VIP move alone, not a proxy.
- `Probe` (client namespace): GET http://VIP:8080/ every 10 ms, each on a new
  connection with a 100 ms connect+read deadline, attempts overlapping, so a
  moved VIP is seen within about 10 ms; records (start, end, node or None).
- `HolderWatch` (client namespace): every 20 ms which node namespaces have
  the VIP on a live link (switch port up, with carrier: a node behind a down
  port answers nobody, so it is not a holder), and every 100 ms how many MACs
  answer an ARP probe for the VIP from the client. A dual-holder observation is an
  `ip addr` sample with >= 2 holders or an ARP sample with >= 2 answers.
- `node_down` / `node_up`: the switch-port half of a whole-node death and of
  its reboot (a rebooted machine comes up without the VIP on its interface).

`python bench/vip_probe.py serve NAME` runs the responder (stdlib only).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

VIP = "10.231.0.200/24"
ADDR = VIP.split("/")[0]
PORT = 8080
NODES = 3  # the nodes the systems run on: namespaces 1..3
TOPOLOGY = 6  # namespaces 4..6 hold a separate etcd (the "vigil-*-etcd-apart" systems)


class VipSystem(Protocol):
    """An HA system keeping `VIP` on one of nodes 1..3 of a NetTopology(3).

    The harness's responders run in every node namespace and are not the
    system's: kill_node leaves them running (behind a down port they are as
    unreachable as the rest of the dead machine)."""

    name: str  # e.g. "keepalived advert_int 1"

    def start(self) -> None:
        """Start on every node; return once exactly one node holds the VIP."""

    def kill_node(self, node: int) -> None:
        """Whole-node death: SIGKILL every process of the system on the node
        and set its switch port down at the same moment (node_down): a
        powered-off machine answers no ARP."""

    def revive_node(self, node: int) -> None:
        """node_up (VIP gone from its eth0, port up), processes restarted;
        return when the system is whole again (one holder, nothing pending)."""

    def kill_daemon(self, node: int) -> None:
        """Agent-only: SIGKILL the HA daemon's processes (for keepalived the
        parent AND the vrrp child); the link stays up."""

    def revive_daemon(self, node: int) -> None:
        """Restart the daemon; return when the system is whole again."""

    def stop(self) -> None:
        """Stop everything the system started (by PID)."""


def name(node: int) -> str:
    return f"n{node}"


def index(node_name: str) -> int:
    return int(node_name[1:])


# --- the node's side: responder, port, interface -------------------------------

def serve(node_name: str) -> None:
    """Answer every GET with `node_name`, until killed."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    body = node_name.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20).stdout


def node_down(net, node: int) -> None:
    """The node's switch port down: from now on it sends and receives nothing."""
    _ip("-n", net.switch, "link", "set", f"p{node}", "down")


def node_up(net, node: int) -> None:
    """A rebooted node: the VIP gone from its eth0 (a powered-off machine
    loses its addresses), then its switch port up."""
    subprocess.run(["ip", "-n", net.ns(node), "addr", "del", VIP, "dev", "eth0"], capture_output=True,
                   timeout=20)
    _ip("-n", net.switch, "link", "set", f"p{node}", "up")


def vip_holders(net) -> list[int]:
    """Nodes whose eth0 has carrier and holds the VIP, by `ip -j addr` (one
    subprocess per node: for waiting on a state, not for sampling)."""
    out = []
    for i in range(1, NODES + 1):
        link = json.loads(_ip("-j", "-n", net.ns(i), "addr", "show", "dev", "eth0"))[0]
        if link.get("operstate") == "UP" and any(a.get("local") == ADDR for a in link.get("addr_info", [])):
            out.append(i)
    return out


# --- the client's side ------------------------------------------------------------

class Probe:
    """GET http://VIP:8080/ every `period` s, each a new connection with a
    `timeout` s deadline for connect + answer; attempts overlap. Records
    (start, end, node name or None) in completion order (monotonic clock,
    which is one clock for every process of the machine).

    The client runs in a process of its own at a raised priority (nice -10),
    as a client machine would: sharing this process's interpreter with the
    holder watch (netlink dumps parsed in Python every 20 ms) it waited for
    the interpreter lock up to ~100 ms at the very moment a VIP moved, and
    measured that wait as outage."""

    def __init__(self, addr: str = ADDR, period: float = 0.01, timeout: float = 0.1):
        self.addr, self.period, self.timeout = addr, period, timeout
        self.records: list[tuple[float, float, str | None]] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> "Probe":
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "probe", self.addr, str(self.period),
             str(self.timeout)], stdout=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(-10))
        self._reader.start()
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
        self._reader.join(10)

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            start, end, node = line.split()
            with self._cond:
                self.records.append((float(start), float(end), None if node == "-" else node))
                self._cond.notify_all()


    def wait_answer(self, ok: Callable[[str], bool], after: float, timeout: float) -> float | None:
        """The end time of the first answer completed after `after` from a node
        for which ok(node) holds; None after `timeout` s."""
        def found() -> float | None:
            hit = None
            for _, e, n in reversed(self.records):  # completion order: newest last
                if e <= after:
                    break
                if n is not None and ok(n):
                    hit = e
            return hit

        with self._cond:
            self._cond.wait_for(lambda: found() is not None, timeout)
            return found()

    def answers(self, t0: float, t1: float) -> list[tuple[float, str]]:
        with self._cond:
            return [(e, n) for s, e, n in self.records if t0 <= e <= t1 and n is not None]

    def largest_gap(self, t0: float, t1: float) -> float | None:
        """The longest time between two consecutive answers (any node) ending in [t0, t1]."""
        ends = sorted(e for e, _ in self.answers(t0, t1))
        return max((b - a for a, b in zip(ends, ends[1:])), default=None)

    def by_node(self, t0: float, t1: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, n in self.answers(t0, t1):
            counts[n] = counts.get(n, 0) + 1
        return counts


async def run_client(addr: str, period: float, timeout: float) -> None:
    """The probe process: one line "start end node" (node "-": no answer) per attempt."""
    async def one() -> None:
        start, node, writer = time.monotonic(), None, None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(addr, PORT)
                writer.write(b"GET / HTTP/1.0\r\n\r\n")
                data = await reader.read()
            head, _, body = data.partition(b"\r\n\r\n")
            if head.startswith(b"HTTP/1.0 200") and body:
                node = body.decode()
        except (OSError, TimeoutError, ValueError):
            pass
        finally:
            if writer is not None:
                writer.close()
        sys.stdout.write(f"{start:.6f} {time.monotonic():.6f} {node or '-'}\n")
        sys.stdout.flush()

    tasks: set[asyncio.Task] = set()
    due = time.monotonic()
    while True:
        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        due = max(due + period, time.monotonic())  # never a burst after a stall
        await asyncio.sleep(due - time.monotonic())

class HolderWatch:
    """Samples, from the client namespace, which nodes hold the VIP (every
    20 ms, netlink into each node namespace and the switch: the VIP among the
    node's addresses and its switch port up with carrier) and how many MACs
    answer ARP for it (every 100 ms)."""

    def __init__(self, net, addr: str = ADDR):
        self.net, self.addr = net, addr
        self.holders: list[tuple[float, tuple[str, ...]]] = []
        self.arps: list[tuple[float, int]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._addr_loop, daemon=True),
                         threading.Thread(target=self._arp_loop, daemon=True)]

    def start(self) -> "HolderWatch":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _sample(self, switch, ns: dict) -> tuple[str, ...]:
        """Holders now: the VIP among the node's addresses, and its switch port
        UP (down, or no carrier from the node's eth0, means a dead link)."""
        ports = {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_OPERSTATE") for link in switch.get_links()}
        return tuple(node_name for node_name, ipr in ns.items()
                     if ports.get(f"p{index(node_name)}") == "UP"
                     and any(a.get_attr("IFA_ADDRESS") == self.addr for a in ipr.get_addr()))

    def _addr_loop(self) -> None:
        from pyroute2 import IPRoute

        switch = IPRoute(netns=self.net.switch)
        ns = {name(i): IPRoute(netns=self.net.ns(i)) for i in range(1, NODES + 1)}
        try:
            due = time.monotonic()
            while not self._stop.wait(max(0.0, due - time.monotonic())):
                due = max(due + 0.02, time.monotonic())
                held = self._sample(switch, ns)
                with self._cond:
                    self.holders.append((time.monotonic(), held))
                    self._cond.notify_all()
        finally:
            for ipr in [switch, *ns.values()]:
                ipr.close()

    def _arp_loop(self) -> None:
        from vigil.resources import arp

        due = time.monotonic()
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + 0.1, time.monotonic())
            n = len(arp.who_has("eth0", self.addr, 0.05))
            with self._cond:
                self.arps.append((time.monotonic(), n))

    def wait(self, ok: Callable[[tuple[str, ...]], bool], timeout: float, what: str) -> tuple[str, ...]:
        """The first holder sample (from now on) for which ok(sample) holds;
        TimeoutError naming `what` after `timeout` s."""
        with self._cond:
            seen = len(self.holders)
            if not self._cond.wait_for(lambda: any(ok(h) for _, h in self.holders[seen:]), timeout):
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            return next(h for _, h in self.holders[seen:] if ok(h))

    def stable_holder(self, hold: float = 1.0, timeout: float = 60, since: float | None = None) -> int:
        """The node that alone has held the VIP for the last `hold` s (waits for
        one); with `since`, only samples taken after it count (a just-revived
        system may still move the VIP: preemption)."""
        def stable() -> str | None:
            if not self.holders or len(self.holders[-1][1]) != 1:
                return None
            last, held = self.holders[-1]
            if since is not None and last < since + hold:
                return None
            for t, h in reversed(self.holders):
                if h != held:
                    return None
                if t <= last - hold:
                    return held[0]
            return None

        with self._cond:
            if not self._cond.wait_for(lambda: stable() is not None, timeout):
                raise TimeoutError(f"timed out after {timeout:g} s waiting for one stable VIP holder")
            return index(stable())

    def dual(self, t0: float, t1: float) -> dict[str, int]:
        """Dual-holder observations in [t0, t1]: `ip addr` samples with >= 2
        holders plus ARP samples with >= 2 answering MACs."""
        with self._cond:
            hs = [len(h) for t, h in self.holders if t0 <= t <= t1]
            arps = [n for t, n in self.arps if t0 <= t <= t1]
        ip_dual, arp_dual = sum(n >= 2 for n in hs), sum(n >= 2 for n in arps)
        return {"dual": ip_dual + arp_dual, "ip_dual": ip_dual, "ip_samples": len(hs),
                "arp_dual": arp_dual, "arp_samples": len(arps),
                "max_holders": max(hs, default=0), "max_arp": max(arps, default=0)}

    def first(self, ok: Callable[[tuple[str, ...]], bool], t0: float, t1: float) -> float | None:
        """When the first sample in [t0, t1] satisfying ok was taken."""
        with self._cond:
            return next((t for t, h in self.holders if t0 <= t <= t1 and ok(h)), None)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "probe":
        try:
            asyncio.run(run_client(sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
        except (KeyboardInterrupt, BrokenPipeError):
            pass
    elif len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit("usage: vip_probe.py serve NODE_NAME")
