"""The lab's fencing parts: one ipmi_sim BMC per node whose power really
controls that node's agent process, a Modbus PLC simulator, and the
token-guarded actuator gateway that the leader's controller writes through.

In a lab on network namespaces these run in the harness's (client)
namespace on its address, a management network that partitions between the
nodes leave up, as a BMC's own network port would be; each node's agent is
powered on inside its own namespace.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil import procs
from vigil.lab.ipmi import IpmiSim

BMC_USER, BMC_PASSWORD = "admin", "vigil-pass"


@dataclass
class LabFencing:
    bmc_ports: dict[str, int]
    plc_port: int
    gateway_port: int
    root: str
    host: str = "127.0.0.1"
    netns: dict[str, str] = field(default_factory=dict)  # node -> its network namespace
    devices: bool = True  # False: the agents get no fencing devices and wait for leases
    # Power off takes the node's eth0 down (labs with a VIP: a powered-off machine answers no
    # ARP). Chaos labs leave it up, so the etcd member beside the node stays reachable, as an
    # etcd member on its own machine would.
    link_down: bool = False
    bmc_pids: dict[str, int] = field(default_factory=dict)
    plc_pid: int = 0
    gateway_pid: int = 0

    @classmethod
    def plan(cls, root: Path, names: list[str], host: str = "127.0.0.1",
             netns: dict[str, str] | None = None, devices: bool = True,
             link_down: bool = False) -> "LabFencing":
        ports = procs.free_ports(len(names) + 2)
        return cls(dict(zip(names, ports)), ports[-2], ports[-1], str(root / "fencing"), host,
                   netns or {}, devices, link_down=link_down)

    @property
    def gateway_url(self) -> str:
        return f"http://{self.host}:{self.gateway_port}"

    @property
    def history(self) -> Path:
        return Path(self.root) / "actuator" / "writes.jsonl"

    def node_config(self, me: str) -> dict[str, Any]:
        topology = {n: [{"type": "ipmi", "host": self.host, "port": port, "user": BMC_USER,
                         "password": BMC_PASSWORD}]
                    for n, port in self.bmc_ports.items() if n != me}
        return ({"fencing": {"topology": topology, "race_delay": 0.5}} if self.devices else {}) | {
                "controller": {"gateway": self.gateway_url, "register": 0, "interval": 0.05}}

    def sim(self, node: str, config: str, log: str, env: dict[str, str] | None = None) -> IpmiSim:
        extra = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []  # `env` execs: same PID
        agent = procs.in_netns(self.netns.get(node, ""), [*extra, sys.executable, "-m", "vigil", "agent",
                                                           "--config", config])
        cmd = f"exec {shlex.join(agent)} >> {shlex.quote(log)} 2>&1"
        ns = self.netns.get(node, "")
        return IpmiSim(Path(self.root) / "bmc" / node, self.bmc_ports[node], ["sh", "-c", cmd],
                       BMC_USER, BMC_PASSWORD, name=node, addr=self.host,
                       link=(ns, "eth0") if self.link_down and ns else None,
                       children=tuple(Path(config).parent / f"{c}.pid" for c in ("router", "inference")))

    def start_support(self, keyring: str, etcd: list[str], cluster: str, etcd_args: list[str] = ()) -> None:
        root = Path(self.root)
        self.plc_pid = procs.spawn([sys.executable, "-m", "vigil", "plc-sim", "--port", str(self.plc_port)],
                                   root / "plc.log").pid
        self.gateway_pid = procs.spawn([sys.executable, "-m", "vigil", "actuator-gateway", "--plc",
                                        f"127.0.0.1:{self.plc_port}", "--listen", str(self.gateway_port),
                                        "--state", str(root / "actuator"), "--host", self.host,
                                        "--keyring", keyring, "--etcd", ",".join(etcd),
                                        "--cluster", cluster, *etcd_args],
                                       root / "gateway.log").pid
        procs.wait_for(lambda: _up(self.gateway_url + "/status"), 20, "the actuator gateway")

    def power_on(self, node: str, config: str, log: str, env: dict[str, str] | None = None) -> int:
        """Power the node on through its BMC (starting the BMC first); returns the agent PID.
        `env`: more environment for the agent (from the first power-on: the BMC keeps its command)."""
        sim = self.sim(node, config, log, env)
        if not procs.owns(self.bmc_pids.get(node, 0), "ipmi_sim"):
            sim.start(power_on=True)
            self.bmc_pids[node] = sim.proc.pid
        else:
            subprocess.run([str(sim.root / "chassis.sh"), "0x20", "set", "power", "1"], check=True,
                           timeout=10)
        return procs.wait_for(sim.node_pid, 10, f"{node} powered on")

    def stop(self) -> None:
        for pid in self.bmc_pids.values():
            procs.stop(pid, "ipmi_sim")
        procs.stop(self.gateway_pid, "actuator-gateway")
        procs.stop(self.plc_pid, "plc-sim")


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5):
            return True
    except OSError:
        return False
