"""Lab: a local Vigil cluster on loopback, described in DIR/lab.json.

`Lab.up(dir, nodes)` starts 3 etcd members and N agents (each a real
process in its own session) and waits until every agent is registered and a
leader holds the role. Fault injection is by PID: `signal_agent`,
`kill_agent`, `start_agent`, `etcd.kill`, `etcd.start`. `down()` stops
everything it started, and only that.

Lab timers (state them when quoting numbers): heartbeat 100 ms, lease TTL
2 s, keep-alive every 0.5 s, self-demotion 1.6 s after the last acknowledged
keep-alive was sent.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from vigil.errors import ConfigError, VigilError
from vigil.files import write_atomic
from vigil.identity import make_cluster_keys
from vigil import procs
from vigil.core.timing import DETECTION_FIELDS
from vigil.lab import secure as secure_lab
from vigil.lab.etcd import EtcdCluster
from vigil.lab.fencing import LabFencing
from vigil.lab.frontdoor import FrontDoor
from vigil.lab.generative import lab_generator
from vigil.lab.configs import CONTINUE_KEY, LabConfigs
from vigil.lab.observe import LabObservation
from vigil.lab.plan import LabNode, LabRouter, plan
from vigil.lab.sensors import LabSensors
from vigil.lab.spec import LabSpec, Workload

START_WAVE = 10  # agents started together in a lab of more than 16
LAB_TIMING = {"heartbeat_interval": 0.1, "lease_ttl": 2, "keepalive_interval": 0.5,
              "demote_after": 1.6, "etcd_timeout": 0.5, "loop_interval": 0.5}


class Lab(LabConfigs, LabObservation):
    def __init__(self, root: Path, cluster: str, etcd: EtcdCluster, nodes: list[LabNode],
                 router: LabRouter | None = None, fencing: LabFencing | None = None,
                 vip: str | None = None, front: FrontDoor | None = None, netns: dict | None = None,
                 sensors: LabSensors | None = None):
        self.root, self.cluster, self.etcd, self.nodes = root, cluster, etcd, nodes
        self.router, self.fencing = router, fencing
        self.vip = vip  # A.B.C.D/N on every node's eth0 (labs in namespaces), held by the leader
        self.front = front  # a router on every node (labs in namespaces with router=True)
        self.netns = netns  # {"tag", "client", "owned"}: the lab's NetTopology
        self.sensors = sensors  # the facility PLC (labs on loopback)
        self.workload = Workload(generate="none")  # what the nodes run (vigil.lab.spec; create sets it)
        self._answered = ""  # the etcd endpoint that answered the last read
        self._tokens: dict[str, dict[str, str]] = {}  # etcd auth token per endpoint (secure labs)
        self.agent_env: dict[str, dict[str, str]] = {}  # more environment for a node's agent (libfaketime)

    # -- construction ----------------------------------------------------------
    @classmethod
    def create(cls, root: Path, spec: LabSpec | int, **options: Any) -> "Lab":
        """Write configs for the lab `spec` describes under `root` (nothing started);
        `Lab.create(root, n, **options)` is `LabSpec.of(n, **options)`. ConfigError
        for a size out of range or an option that does not exist."""
        spec = spec if isinstance(spec, LabSpec) else LabSpec.of(spec, **options)
        spec.check()
        root = root.resolve()
        if (root / "lab.json").exists():
            raise VigilError(f"{root}/lab.json exists: run `vigil lab down --dir {root}` first "
                             "or choose another --dir")
        root.mkdir(parents=True, exist_ok=True)
        p, net, names = plan(root, spec), spec.net, [f"n{i + 1}" for i in range(spec.nodes)]
        tls = secure_lab.plan_tls(root, [h for h, _ in p.hosts or []], names,
                                  [h for h, _ in p.etcd_hosts or []]) if spec.secure else None
        etcd = EtcdCluster.plan(root / "etcd", 3, p.etcd_hosts, tls)
        make_cluster_keys(root / "keys", names)
        write_atomic(root / "keys" / CONTINUE_KEY, secrets.token_hex(32) + "\n")
        front = FrontDoor(*p.front_ports) if spec.router and net else None
        lab = cls(root, spec.cluster, etcd, p.nodes, p.router,
                  LabFencing.plan(root, names, net.client_host if net else "127.0.0.1",
                                  {x.name: x.netns for x in p.nodes}, spec.fence_devices,
                                  link_down=bool(spec.vip and net)) if spec.fencing else None,
                  spec.vip if net else None, front,
                  {"tag": net.tag, "client": net.client, "owned": spec.own_net} if net else None,
                  None if net else LabSensors(p.sensors_port, spec.nodes, str(root / "sensors.log")))
        lab.workload = dataclasses.replace(spec.workload, generate=lab_generator(spec.workload.generate))
        lab.write_configs(dict(spec.timing or LAB_TIMING))
        return lab

    def write_configs(self, timing: dict[str, Any]) -> None:
        """Every process's configuration file, from the plan (and each node's kernel log)."""
        self.detection = {k: timing[k] for k in DETECTION_FIELDS if k in timing}  # routers hear the agents
        if self.router:
            Path(self.router.config).write_text(yaml.safe_dump(self.router_config(), sort_keys=False))
        for i, node in enumerate(self.nodes):
            Path(node.data_dir).mkdir(parents=True, exist_ok=True)
            self.kernel_log(node.name).touch()
            if self.front:
                self.front.config_path(node.data_dir).write_text(yaml.safe_dump(self.node_router_config(node),
                                                                                sort_keys=False))
            Path(node.config).write_text(yaml.safe_dump(self.node_config(node, priority=100 - i, timing=timing),
                                                        sort_keys=False))

    @classmethod
    def up(cls, root: Path, spec: LabSpec | int, timeout: float = 30.0, **options: Any) -> "Lab":
        """`create`, then `start(timeout)`: a running lab, or an error with nothing left running."""
        lab = cls.create(root, spec, **options)
        lab.start(timeout)
        return lab

    def start(self, timeout: float = 30.0) -> None:
        """Start what `create` planned; wait until `ready()`. Stops it all on failure."""
        try:
            self.etcd.start()
            self.save()
            self.etcd.wait_healthy()
            if self.etcd.tls:
                secure_lab.enable(self.etcd, self.root, self.cluster, [n.name for n in self.nodes])
            if self.sensors:
                self.sensors.start()
            if self.fencing:
                self.fencing.start_support(str(self.root / "keys" / "cluster.keyring"),
                                           self.etcd.endpoints, self.cluster,
                                           secure_lab.gateway_args(self.root) if self.etcd.tls else [])
            self._start_agents()
            if self.router:
                self.start_router()
            self.save()
            if any(n.server_url for n in self.nodes):  # a model loads in seconds per server on 2 cores
                timeout += 20.0 * len(self.nodes)
            timeout += 1.5 * max(0, len(self.nodes) - 10)  # an agent's start costs ~1 s of CPU on 2 cores
            self.wait_for(self.ready, timeout, "a leader, and every agent hearing every peer")
            self.save()  # now with the model servers' PIDs
        except BaseException:
            self.down()
            raise

    def _start_agents(self) -> None:
        """Every agent; above 16, in waves of 10, each holding its etcd session before
        the next starts: 60 agents importing at once on 2 cores starve etcd's answers
        and each other's heartbeats (a thundering herd no real cluster has)."""
        waves = [self.nodes] if len(self.nodes) <= 16 else \
            [self.nodes[i:i + START_WAVE] for i in range(0, len(self.nodes), START_WAVE)]
        for wave in waves:
            for node in wave:
                self.start_agent(node.name)
            if len(waves) > 1:
                self.wait_for(lambda: all((self.agent_status(n.name, 2) or {}).get("session", {}).get("ok")
                                          for n in wave), 120, f"{wave[0].name}..{wave[-1].name} to hold "
                                                               "their etcd sessions", poll=0.5)

    @classmethod
    def load(cls, root: Path) -> "Lab":
        path = root.resolve() / "lab.json"
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("--lab/--dir", str(root), f"cannot read {path} ({e}); start one with "
                              f"`vigil lab up --dir {root}`") from None
        lab = cls(Path(d["dir"]), d["cluster"], EtcdCluster.from_json(d["etcd"]),
                  [LabNode(**x) for x in d["nodes"]],
                  LabRouter(**d["router"]) if d.get("router") else None,
                  LabFencing(**d["fencing"]) if d.get("fencing") else None,
                  (d.get("vip") or {}).get("address"),
                  FrontDoor(**d["front_door"]) if d.get("front_door") else None, d.get("netns"),
                  LabSensors(**d["sensors"]) if d.get("sensors") else None)
        lab.workload = Workload(generate=d.get("generate") or "none")  # the rest is in the configs written
        return lab

    def save(self) -> None:
        tls = self.root / "tls"
        doc = {"dir": str(self.root), "cluster": self.cluster, "etcd": self.etcd.to_json(),
               **({"ca": str(tls / "ca.pem"), "operator_cert": str(tls / "operator.pem"),
                   "operator_key": str(tls / "operator.key"), "operator_user": "operator",
                   "operator_password_file": str(tls / "operator.password"),
                   "api_token_file": str(tls / "operator.api-token")} if self.etcd.tls else {}),
               "router": asdict(self.router) if self.router else None,
               "fencing": asdict(self.fencing) if self.fencing else None,
               "vip": self._vip_json(), "front_door": asdict(self.front) if self.front else None,
               "netns": self.netns, "client_netns": self.netns["client"] if self.netns else None,
               "sensors": asdict(self.sensors) if self.sensors else None, "generate": self.workload.generate,
               "nodes": [asdict(n) for n in self.nodes]}
        for n in doc["nodes"]:
            n["server_pid"] = self.server_pid(n["name"])
            n["router_pid"] = self.router_pid(n["name"])
        tmp = self.root / "lab.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.replace(self.root / "lab.json")

    def _vip_json(self) -> dict[str, str] | None:
        if not self.vip:
            return None
        ip = self.vip.split("/")[0]
        return {"address": self.vip, "ip": ip, **({"url": self.front.url(ip)} if self.front else {})}

    def down(self) -> None:
        """Stop the router, every agent (each stops its model server and router),
        any child an agent left behind, then every etcd member; delete the
        namespaces when the lab made them; remove lab.json."""
        if self.router:
            procs.stop(self.router.pid, self.router.config)
        leftovers = [(self.server_pid(n.name), n.server_url, self.router_pid(n.name), n.data_dir)
                     for n in self.nodes]
        # Every agent at once: each stops its own model server and router, which takes
        # a model lab about 1.5 s per node one after another.
        procs.stop_all([(node.agent_pid, node.config) for node in self.nodes])
        procs.stop_all([(pid, "serve-model --port " + url.rsplit(":", 1)[1])
                        for pid, url, _, _ in leftovers if pid and url]
                       + [(router_pid, str(self.front.config_path(data_dir)))
                          for _, _, router_pid, data_dir in leftovers if router_pid and self.front])
        if self.fencing:
            self.fencing.stop()
        if self.sensors:
            self.sensors.stop()
        self.etcd.stop()
        if self.netns and self.netns.get("owned"):
            from vigil.lab.netns import NetTopology

            NetTopology(len(self.nodes), tag=self.netns["tag"]).destroy_all()
        (self.root / "lab.json").unlink(missing_ok=True)

    # -- fault injection ------------------------------------------------------------
    def node(self, name: str) -> LabNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise VigilError(f"no node {name} in this lab")

    def start_agent(self, name: str, nice: int = 0) -> int:
        """`nice`: agent and model server at that niceness (a lab's nodes share its CPUs)."""
        node = self.node(name)
        if self.fencing:  # the node's BMC powers it on
            node.agent_pid = self.fencing.power_on(name, node.config, node.log, self.agent_env.get(name))
            return node.agent_pid
        env = [f"{k}={v}" for k, v in self.agent_env.get(name, {}).items()]  # `env` execs: same PID
        p = procs.spawn(procs.in_netns(node.netns, [*(["env", *env] if env else []), sys.executable, "-m",
                                                    "vigil", "agent", "--config", node.config]), Path(node.log), nice=nice)
        node.agent_pid = p.pid
        return p.pid

    def start_router(self) -> int:
        assert self.router is not None
        p = procs.spawn([sys.executable, "-m", "vigil", "router", "--config", self.router.config],
                        Path(self.router.log))
        self.router.pid = p.pid
        return p.pid

    def server_pid(self, name: str) -> int | None:
        """PID of the node's model server now (the agent restarts it with a new PID)."""
        from vigil.agent.inference import server_pid
        return server_pid(Path(self.node(name).data_dir))

    def router_pid(self, name: str) -> int | None:
        """PID of the node's own router now (the agent restarts it with a new PID)."""
        from vigil.agent.child import child_pid
        return child_pid(Path(self.node(name).data_dir), "router") if self.front else None

    def kernel_log(self, name: str) -> Path:
        """Node `name`'s own kernel log (health.kernel_log), in dmesg's format."""
        return Path(self.node(name).data_dir) / "kernel.log"

    def log_kernel(self, name: str, message: str) -> None:
        """Append `message` to `name`'s kernel log as the kernel would, e.g. the NVIDIA
        driver's `NVRM: Xid (PCI:0000:3b:00): 79, pid=..., GPU has fallen off the bus.`"""
        with self.kernel_log(name).open("a") as f:
            f.write(f"[{time.monotonic():12.6f}] {message}\n")

    def signal_server(self, name: str, sig: int) -> bool:
        pid, url = self.server_pid(name), self.node(name).server_url
        return bool(pid and url) and procs.signal_pid(pid, sig, "serve-model --port " + url.rsplit(":", 1)[1])

    def kill_node(self, name: str) -> dict[str, int | None]:
        """SIGKILL every process of the node (agent, router, model server; not its
        etcd member): the whole node dies. Returns the PIDs killed."""
        node = self.node(name)
        pids = {"agent": node.agent_pid if procs.owns(node.agent_pid, node.config) else None,
                "router": self.router_pid(name), "server": self.server_pid(name)}
        self.signal_agent(name, signal.SIGKILL)  # first: it would restart the others
        if pids["router"] and self.front:
            procs.signal_pid(pids["router"], signal.SIGKILL, str(self.front.config_path(node.data_dir)))
        self.signal_server(name, signal.SIGKILL)
        for pid in pids.values():
            if pid:
                procs.wait_dead(pid, 5.0)
        return pids

    def signal_agent(self, name: str, sig: int) -> bool:
        node = self.node(name)
        return procs.signal_pid(node.agent_pid, sig, node.config)

    def reload_keys(self, names: list[str] | None = None) -> None:
        """SIGHUP: the named agents (all by default) read their keys again;
        with every agent, the router and the actuator gateway too."""
        for name in names or [n.name for n in self.nodes]:
            self.signal_agent(name, signal.SIGHUP)
        if names is None and self.router:
            procs.signal_pid(self.router.pid, signal.SIGHUP, self.router.config)
        if names is None and self.fencing:
            procs.signal_pid(self.fencing.gateway_pid, signal.SIGHUP, "actuator-gateway")

    def kill_agent(self, name: str) -> None:
        node = self.node(name)
        self.signal_agent(name, signal.SIGKILL)
        procs.wait_dead(node.agent_pid, 5.0)

    def stop_agent(self, name: str, timeout: float = 10.0) -> None:
        node = self.node(name)
        procs.stop(node.agent_pid, node.config, grace=timeout)
