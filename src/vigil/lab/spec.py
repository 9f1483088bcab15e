"""What a lab is, as one value: `LabSpec` (its size, its parts, where it runs)
and its `Workload` (what the nodes run and how). `Lab.create(root, spec)`
builds from it; `Lab.create(root, n, **options)` and `Lab.up` take the same
fields as keywords. A field that does not exist is a ConfigError naming the
ones that do, never a silent default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from vigil.errors import ConfigError

MAX_NODES = 100  # on loopback; each agent idles at about 3 % of a core
MAX_NODES_NETNS = 32  # in namespaces: an etcd member beside each of the first 3


@dataclass(frozen=True)
class Workload:
    """What the lab's nodes run and how they are configured.

    requires: health.requires for every node; declare: {node: {key: value}},
    health.declare per node; flap_threshold: flap damping (0: off, as a lab
    kills nodes on purpose); router_queue_wait: the router's admission
    queue_wait; etcd_leader_apart: etcd.local_member first, so a leader moves
    raft leadership off its machine; generate: the generative model (auto,
    none, reference, smollm2-135m-instruct); router_retry: the routers' `retry:`;
    continue_key: routers and model servers share a continuation key;
    rack_size: nodes per failure domain; topology: heartbeat.topology (e.g.
    {"full_mesh_up_to": 1000}); realtime: heartbeat.realtime (e.g.
    {"priority": 10, "lock_memory": True})."""
    requires: Mapping[str, str] = field(default_factory=dict)
    declare: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    flap_threshold: int = 0
    router_queue_wait: float | None = None
    etcd_leader_apart: bool = False
    generate: str = "auto"
    router_retry: Mapping[str, Any] = field(default_factory=dict)
    continue_key: bool = True
    rack_size: int = 10
    topology: Mapping[str, Any] | None = None
    realtime: Mapping[str, Any] | None = None

    @classmethod
    def of(cls, given: "Workload | Mapping[str, Any] | None") -> "Workload":
        """A Workload from a dict of its fields (None: the defaults)."""
        if isinstance(given, Workload):
            return given
        _only_fields(cls, given or {}, "workload", "not a workload field; the fields are")
        return cls(**{k: v for k, v in (given or {}).items() if v is not None})  # None: the default


@dataclass(frozen=True)
class LabSpec:
    """A lab of `nodes` nodes named `cluster`.

    timing: the agents' timers (None: vigil.lab.cluster.LAB_TIMING); model: a
    model server per node; router: a router (on loopback), or one on every node
    (in namespaces, `net`); fencing: BMCs, a PLC and the actuator the leader
    drives, and `fence_devices=False` keeps those but gives the agents no fencing
    devices (takeover waits for the lease); net: a vigil.lab.netns.NetTopology,
    node i in its namespace on its address, etcd member i beside it; own_net:
    `down()` deletes the topology's namespaces too; etcd_apart: the etcd members
    in namespaces n+1..n+3 of `net` (a separate control plane); secure: etcd with
    TLS, client certificates, users and roles (vigil.lab.secure); vip: the
    leader's address on every node's eth0 (in namespaces)."""
    nodes: int
    cluster: str = "lab"
    timing: Mapping[str, Any] | None = None
    model: bool = False
    router: bool = False
    fencing: bool = False
    net: Any = None
    fence_devices: bool = True
    secure: bool = False
    vip: str | None = None
    own_net: bool = False
    etcd_apart: bool = False
    workload: Workload = field(default_factory=Workload)

    @classmethod
    def of(cls, nodes: int, **options: Any) -> "LabSpec":
        """A LabSpec from keywords (`workload` may be a dict of Workload's fields)."""
        _only_fields(cls, options, "lab", "not a lab option; the options are", {"nodes"})
        return cls(nodes, **{**options, "workload": Workload.of(options.get("workload"))})

    def check(self) -> None:
        most = MAX_NODES_NETNS if self.net else MAX_NODES
        if not (3 if self.net else 1) <= self.nodes <= most:
            raise ConfigError("--nodes", self.nodes, f"a lab has 1 to {MAX_NODES} nodes (3 to {MAX_NODES_NETNS} "
                                                     "in namespaces: an etcd member beside each of the first 3)")


def _only_fields(cls: type, given: Mapping[str, Any], what: str, problem: str,
                 hidden: frozenset[str] | set[str] = frozenset()) -> None:
    """ConfigError naming each key of `given` that is not a field of dataclass `cls`, and the fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        raise ConfigError(what, ", ".join(unknown), f"{problem} {', '.join(sorted(names - set(hidden)))}")
