"""keepalived 2.2.7 (the Debian package) as a VipSystem for bench/vip.py: one
instance per node namespace of a NetTopology, VRRPv3 (`vrrp_version 3`, also
at advert_int 1), unicast to the two other nodes, every node `state BACKUP`
with priorities 150/100/50 and keepalived's default preemption, so node 1
holds the VIP whenever it is up and node 2 takes over when it dies
(master-down = 3 x advert + (256 - 100) / 256 x advert: 3.61 s at 1 s,
0.361 s at 0.1 s).

Each instance runs `keepalived -n -l -D -P` with its own -p/-r pid files
(a second instance on the same pid files exits with rc 0; a stale pid file
naming a zombie does the same, so they are removed before every start).
A kill is SIGSTOP then SIGKILL of the parent and of the VRRP child (read from
the -r pid file): SIGKILL of the parent alone makes the child resign
gracefully, which is not a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from vip_probe import VIP, node_down, node_up, vip_holders

from vigil import procs

PRIORITIES = {1: 150, 2: 100, 3: 50}
MARKER = "keepalived"


def config(net, node: int, vip: str, advert_int: float) -> str:
    peers = "\n".join(f"        {net.host(j)}" for j in PRIORITIES if j != node)
    return f"""global_defs {{
    router_id vb_n{node}
    vrrp_version 3
    enable_script_security
    script_user root
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 51
    priority {PRIORITIES[node]}
    advert_int {advert_int:g}
    unicast_src_ip {net.host(node)}
    unicast_peer {{
{peers}
    }}
    virtual_ipaddress {{
        {vip} dev eth0
    }}
}}
"""


class KeepalivedCluster:
    """Three keepalived instances keeping `vip` on a NetTopology(3)."""

    def __init__(self, net, vip: str = VIP, advert_int: float = 1.0, dir: Path | None = None):
        self.net, self.vip, self.advert_int = net, vip, advert_int
        self.name = f"keepalived advert_int {advert_int:g}"
        self.dir = Path(dir or "/tmp") / f"keepalived-{advert_int:g}"
        self.procs: dict[int, subprocess.Popen] = {}
        self.settle = 10 * advert_int + 10  # s: enough for any master-down interval plus startup

    def _files(self, node: int) -> tuple[Path, Path, Path]:
        return (self.dir / f"n{node}.conf", self.dir / f"n{node}.pid", self.dir / f"n{node}-vrrp.pid")

    def _child(self, node: int) -> int:
        try:
            return int(self._files(node)[2].read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _start(self, node: int) -> None:
        """Start node's instance; return once its VRRP child is running."""
        conf, pid, vrrp = self._files(node)
        conf.write_text(config(self.net, node, self.vip, self.advert_int))
        for f in (pid, vrrp):
            f.unlink(missing_ok=True)
        cmd = ["keepalived", "-n", "-l", "-D", "-P", "-f", str(conf), "-p", str(pid), "-r", str(vrrp)]
        p = procs.spawn(procs.in_netns(self.net.ns(node), cmd), self.dir / f"n{node}.log")
        self.procs[node] = p

        def running() -> bool:
            if p.poll() is not None:  # e.g. "daemon is already running" exits 0
                raise RuntimeError(f"keepalived on n{node} exited rc {p.returncode}; see {self.dir}/n{node}.log")
            return procs.alive(self._child(node))

        procs.wait_for(running, 10, f"keepalived's VRRP child on n{node}")

    def _whole(self) -> None:
        """Wait until the highest-priority running node alone holds the VIP
        (preemption done: nothing will move while the harness measures)."""
        best = min(n for n, p in self.procs.items() if p.poll() is None)
        procs.wait_for(lambda: vip_holders(self.net) == [best], self.settle, f"n{best} alone holding the VIP")

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["keepalived", "--version"], check=True, capture_output=True)
        for node in PRIORITIES:
            self._start(node)
        self._whole()

    def _kill(self, node: int, port_down: bool) -> None:
        """SIGSTOP both processes (no advert leaves after this), the port down
        if asked, then SIGKILL both and reap them."""
        p = self.procs.pop(node)
        pids = [pid for pid in (p.pid, self._child(node)) if procs.owns(pid, MARKER)]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        if port_down:
            node_down(self.net, node)
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        p.wait(10)
        for pid in pids[1:]:
            procs.wait_dead(pid, 10)  # the orphaned child: reaped by us (subreaper) or by PID 1

    def kill_node(self, node: int) -> None:
        self._kill(node, port_down=True)

    def revive_node(self, node: int) -> None:
        node_up(self.net, node)
        self._start(node)
        self._whole()

    def kill_daemon(self, node: int) -> None:
        self._kill(node, port_down=False)

    def revive_daemon(self, node: int) -> None:
        self._start(node)
        self._whole()

    def stop(self) -> None:
        """SIGTERM every parent (keepalived then removes its VIP), SIGKILL after 5 s."""
        for node, p in list(self.procs.items()):
            child = self._child(node)
            procs.stop(p.pid, MARKER)
            p.wait(10)
            if not procs.wait_dead(child, 5):
                procs.signal_pid(child, signal.SIGKILL, MARKER)
                procs.wait_dead(child, 5)
            self.procs.pop(node)
