"""Vigil's side of bench/vip.py: a lab (vigil.lab.Lab) on the bench's
three-node namespace topology whose leader holds the VIP, at Vigil's default
100 ms heartbeat (lab timers: lease TTL 2 s, keep-alive 0.5 s,
self-demotion 1.6 s after the last acknowledged keep-alive).

- "vigil": no fencing; a dead holder's successor waits for its etcd lease.
- "vigil-fencing": a BMC (ipmi_sim) per node; the successor powers the dead
  holder off through it (which takes its eth0 down) and takes over without
  waiting for the lease.
- "vigil-fencing-fast...": fencing with the fast detection profile
  (vigil.core.timing.FAST_DETECTION: 50 ms heartbeats in 3 copies, a steady
  sender suspected ~122 ms after its last heartbeat; issue 26 #1-#2).
- "...-etcd-apart": the same with etcd on three namespaces of its own. With
  etcd beside the nodes (the lab's layout, and a small cluster's), a node
  death that takes etcd's raft leader with it stalls every etcd write for
  an etcd election (election timeout 500 ms here) before anyone can take over;
  so those systems set `etcd.local_member` (README.md, deployment step 5) and
  the Vigil leader keeps etcd's raft leadership on another machine.

The processes of a node are its agent only (the bench's responders stand
for the service behind the VIP, the same for every system).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from vip_probe import NODES, VIP, name, node_down, node_up, vip_holders

from vigil import procs
from vigil.core.timing import FAST_DETECTION
from vigil.lab import Lab
from vigil.lab.cluster import LAB_TIMING
from vigil.lab.netns import NetTopology


class VigilVip:
    def __init__(self, net: NetTopology, root: Path, fencing: bool, etcd_apart: bool = False, fast: bool = False):
        self.net, self.root, self.fencing, self.etcd_apart = net, root, fencing, etcd_apart
        self.timing = LAB_TIMING | (FAST_DETECTION if fast else {})
        beat = "heartbeat 50 ms x3 (fast detection)" if fast else "heartbeat 100 ms"
        self.name = (f"Vigil, {beat}, {'fencing (IPMI)' if fencing else 'no fencing (lease)'}, "
                     f"etcd {'apart (3 own namespaces)' if etcd_apart else 'on the nodes (etcd.local_member)'}")
        self.lab: Lab | None = None

    def start(self) -> None:
        # With etcd beside the nodes, the deployment README.md describes: etcd.local_member set,
        # so the leader keeps etcd's raft leadership on another machine.
        self.lab = Lab.up(self.root, NODES, net=self.net, vip=VIP, fencing=self.fencing, timing=self.timing,
                          etcd_apart=self.etcd_apart, workload={"etcd_leader_apart": not self.etcd_apart})
        self._whole()

    def _whole(self) -> None:
        """Every agent up and hearing every peer, a leader, and exactly one holder.
        A node fenced meanwhile (the partition test powers the cut-off holder
        off) is powered on again first."""
        assert self.lab is not None
        for node in self.lab.nodes:
            if not procs.owns(node.agent_pid, node.config):
                self.lab.start_agent(node.name)
        self.lab.save()
        self.lab.wait_for(self.lab.ready, 60, "the cluster whole again")
        self.lab.wait_for(lambda: len(vip_holders(self.net)) == 1, 30, "exactly one VIP holder")

    def kill_node(self, node: int) -> None:
        assert self.lab is not None
        pid = self.lab.node(name(node)).agent_pid
        killed = self.lab.signal_agent(name(node), signal.SIGKILL)
        node_down(self.net, node)
        if not killed:  # never measure a port-down as a node death
            raise RuntimeError(f"{name(node)}'s agent (pid {pid}) was not running when it was to be killed")
        procs.wait_dead(self.lab.node(name(node)).agent_pid, 5.0)

    def revive_node(self, node: int) -> None:
        node_up(self.net, node)
        self.revive_daemon(node)

    def kill_daemon(self, node: int) -> None:
        assert self.lab is not None
        self.lab.kill_agent(name(node))

    def revive_daemon(self, node: int) -> None:
        assert self.lab is not None
        self.lab.start_agent(name(node))  # with fencing: powered on through its BMC (eth0 up)
        self._whole()

    def stop(self) -> None:
        if self.lab:
            self.lab.down()
            self.lab = None


def vigil_systems(net: NetTopology, args: argparse.Namespace) -> dict[str, VigilVip]:
    root = Path(args.dir)
    return {key: VigilVip(net, root / key, fencing="fencing" in key, etcd_apart=key.endswith("etcd-apart"),
                          fast="-fast" in key)
            for key in ("vigil", "vigil-fencing", "vigil-etcd-apart", "vigil-fencing-etcd-apart",
                        "vigil-fencing-fast", "vigil-fencing-fast-etcd-apart")}
