"""The files a lab writes for its processes: each node's agent configuration,
the routers' configurations and each model server's command line, from the
lab's plan (ports, hosts, etcd, TLS, fencing, sensors, `workload`).

A mixin of vigil.lab.Lab: it reads `root`, `cluster`, `etcd`, `nodes`,
`router`, `front`, `vip`, `sensors`, `fencing` and `workload` from the lab;
a `node` is one of the lab's vigil.lab.plan.LabNode; `workload` a
vigil.lab.spec.Workload.
"""

from __future__ import annotations

import sys
from typing import Any

from vigil.lab import secure as secure_lab
from vigil.lab.generative import generate_args

# The routers sign stream continuations with it and the model servers honour no
# other (vigil.router.continue_sign): a client can never send its own.
CONTINUE_KEY = "continue.key"


class LabConfigs:
    detection: dict[str, Any] = {}  # the agents' detector timers, which routers share (Lab.write_configs)

    def node_config(self, node: Any, priority: int, timing: dict[str, Any]) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "node": node.name, "priority": priority,
            "failure_domain": self._rack(node),
            "data_dir": node.data_dir,
            "api": {"host": node.host, "port": int(node.api_url.rsplit(":", 1)[1]),
                    **(secure_lab.api_block(self.root, node.name) if self.etcd.tls else {})},
            "etcd": self._etcd_block(node.name, next((m for m in self.etcd.members
                                                       if node.netns and m.netns == node.netns), None)),
            "heartbeat": {"addresses": [node.host], "port": node.heartbeat_port,
                          "signing_key_file": str(self.root / "keys" / f"{node.name}.key"),
                          "keyring_file": str(self.root / "keys" / "cluster.keyring"),
                          "peers": [{"name": p.name, "addresses": [p.host], "port": p.heartbeat_port,
                                     "failure_domain": self._rack(p)}
                                    for p in self.nodes if p.name != node.name],
                          "observers": self._observers(),
                          **({"topology": dict(self.workload.topology)} if self.workload.topology else {}),
                          **({"realtime": dict(self.workload.realtime)} if self.workload.realtime else {})},
            "timing": dict(timing),
            # No whole-second watchdog timeout fits the lab's 2 s lease, and no lab
            # may reset the machine it runs on.
            "watchdog": {"mode": "off"},
            **({"vips": [{"address": self.vip, "interface": "eth0"}]} if self.vip else {}),
            **({"router": {"config": str(self.front.config_path(node.data_dir))}} if self.front else {}),
            "health": (self.sensors.node_health(self.nodes.index(node)) if self.sensors else {})
            | {"requires": dict(self.workload.requires),
               # The nodes share this host's kernel: each follows a kernel log of its own,
               # where `Lab.log_kernel` writes what its GPU would (NVRM Xid lines).
               "kernel_log": str(self.kernel_log(node.name)),
               "declare": dict(self.workload.declare.get(node.name, {})),
               # A lab kills the same node again and again on purpose (tests, chaos, benches):
               # flap damping is off unless asked for.
               "flap_threshold": self.workload.flap_threshold},
        } | self._inference_config(node) | (self.fencing.node_config(node.name) if self.fencing else {})

    def _rack(self, node: Any) -> str:
        """The lab's failure domains: racks of `rack_size` (10) nodes in name order."""
        return f"rack-{self.nodes.index(node) // self.workload.rack_size + 1}"

    def _observers(self) -> list[dict[str, Any]]:
        if self.front:
            return self.front.observers([n.host for n in self.nodes])
        return [{"address": "127.0.0.1", "port": self.router.heartbeat_port}] if self.router else []

    def node_router_config(self, node: Any) -> dict[str, Any]:
        assert self.front is not None
        cfg = self.front.router_config(self.cluster, node.name, node.host, self._etcd_block("router"),
                                       str(self.root / "keys" / "cluster.keyring"),
                                       secure_lab.admin_block(self.root) if self.etcd.tls else {})
        cfg["retry"].update(self._continue_key())
        return cfg | ({"timing": dict(self.detection)} if self.detection else {})

    def _etcd_block(self, name: str, local: Any = None) -> dict[str, Any]:
        # `local`: the etcd member on the node's own machine; if asked (README.md, deployment
        # step 5), listed first and named, so a leading agent moves raft leadership off it.
        eps, apart = self.etcd.endpoints, local is not None and self.workload.etcd_leader_apart
        if apart:
            eps = [local.client_url] + [e for e in eps if e != local.client_url]
        block = {"endpoints": eps} if self.etcd.tls is None else secure_lab.etcd_block(self.root, eps, name)
        return block | ({"local_member": local.name} if apart else {})

    def _inference_config(self, node: Any) -> dict[str, Any]:
        if not node.server_url:
            return {}
        port, key = node.server_url.rsplit(":", 1)[1], self._continue_key()
        return {"inference": {
            "url": node.server_url, "canary_interval": 0.5, "canary_timeout": 1.0,
            "load_interval": 0.1, "silence_window": 0.5, "stall_window": 5.0,
            "command": [sys.executable, "-m", "vigil", "serve-model", "--port", port, "--host", node.host,
                        "--node", node.name, "--fault-injection", *generate_args(self.workload.generate),
                        *(["--continue-key-file", key["continue_key_file"]] if key else [])]}}

    def _continue_key(self) -> dict[str, str]:
        # workload continue_key: false leaves it out (bench/hostile.py runs 7cf5bfd's
        # processes in this lab, which know no such option)
        if not self.workload.continue_key:
            return {}
        return {"continue_key_file": str(self.root / "keys" / CONTINUE_KEY)}

    def router_config(self) -> dict[str, Any]:
        assert self.router is not None
        return {"cluster": self.cluster, "name": "router",
                "listen": {"host": "127.0.0.1", "port": int(self.router.url.rsplit(":", 1)[1])},
                "admin": {"host": "127.0.0.1", "port": int(self.router.admin_url.rsplit(":", 1)[1]),
                          **(secure_lab.admin_block(self.root) if self.etcd.tls else {})},
                "etcd": self._etcd_block("router"),
                "heartbeat": {"address": "127.0.0.1", "port": self.router.heartbeat_port,
                              "keyring_file": str(self.root / "keys" / "cluster.keyring")},
                "retry": {"per_try_timeout": 3.0, "max_attempts": 3, **self.workload.router_retry,
                          **self._continue_key()},
                **({"admission": {"queue_wait": w}} if (w := self.workload.router_queue_wait) else {}),
                **({"timing": dict(self.detection)} if self.detection else {})}
