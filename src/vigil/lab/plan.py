"""Where a lab's processes go (vigil.lab.spec.LabSpec -> addresses and ports):
each node's host, namespace, API, heartbeat and model-server ports, and the
router's, decided before anything is written or started."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from vigil import procs
from vigil.lab.spec import LabSpec


@dataclass
class LabNode:
    name: str
    config: str
    data_dir: str
    log: str
    api_url: str
    heartbeat_port: int
    agent_pid: int = 0
    server_pid: int | None = None
    server_url: str | None = None
    host: str = "127.0.0.1"
    netns: str = ""
    router_pid: int | None = None  # the node's own router (labs with a front door on every node)


@dataclass
class LabRouter:
    url: str
    config: str
    log: str
    heartbeat_port: int
    pid: int = 0
    admin_url: str = ""  # /metrics and /_vigil/status


@dataclass(frozen=True)
class LabPlan:
    """The nodes, the router on loopback (None in namespaces, where every node
    has its own), the sensor PLC's port, the front door's three ports, and
    (host, namespace) of each node and each etcd member (None: loopback)."""
    nodes: list[LabNode]
    router: LabRouter | None
    sensors_port: int
    front_ports: tuple[int, int, int]
    hosts: list[tuple[str, str]] | None
    etcd_hosts: list[tuple[str, str]] | None


def plan(root: Path, spec: LabSpec) -> LabPlan:
    n, net, scheme = spec.nodes, spec.net, "https" if spec.secure else "http"
    hosts = [(net.host(i + 1), net.ns(i + 1)) for i in range(n)] if net else None
    etcd_hosts = [(net.host(n + j), net.ns(n + j)) for j in (1, 2, 3)] if net and spec.etcd_apart else hosts
    ports = procs.free_ports(3 * n + 4)
    nodes = []
    for i in range(n):
        d = root / "nodes" / f"n{i + 1}"
        host, ns = hosts[i] if hosts else ("127.0.0.1", "")
        nodes.append(LabNode(f"n{i + 1}", str(d / "config.yaml"), str(d), str(d / "agent.log"),
                             f"{scheme}://{host}:{ports[3 * i]}", ports[3 * i + 1],
                             server_url=f"http://{host}:{ports[3 * i + 2]}" if spec.model else None,
                             host=host, netns=ns))
    router = (LabRouter(f"http://127.0.0.1:{ports[-2]}", str(root / "router.yaml"), str(root / "router.log"),
                        ports[-1], admin_url=f"{scheme}://127.0.0.1:{ports[-3]}")
              if spec.router and not net else None)
    return LabPlan(nodes, router, ports[-4], (ports[-3], ports[-2], ports[-1]), hosts, etcd_hosts)
