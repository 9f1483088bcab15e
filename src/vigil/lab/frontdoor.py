"""The front door of a lab in network namespaces: a router on every node,
run by that node's agent, listening on the same port on every node's
wildcard address, so whichever node holds the VIP answers at
http://VIP:PORT. Requests accepted by a router whose node then dies are the
client's to retry; requests after the VIP moved reach the new holder's router.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class FrontDoor:
    port: int  # the public listener, on 0.0.0.0 in every node's namespace
    admin_port: int  # /metrics and /_vigil/status, on the node's own address
    heartbeat_port: int  # where each router hears every node's heartbeats

    def url(self, host: str) -> str:
        return f"http://{host}:{self.port}"

    @staticmethod
    def config_path(data_dir: str) -> Path:
        return Path(data_dir) / "router.yaml"

    def observers(self, hosts: list[str]) -> list[dict[str, Any]]:
        """Every node's router receives every node's heartbeats."""
        return [{"address": h, "port": self.heartbeat_port} for h in hosts]

    def router_config(self, cluster: str, name: str, host: str, etcd: dict[str, Any],
                      keyring: str, admin_security: dict[str, Any]) -> dict[str, Any]:
        return {"cluster": cluster, "name": f"router-{name}",
                "listen": {"host": "0.0.0.0", "port": self.port},
                "admin": {"host": host, "port": self.admin_port, **admin_security},
                "etcd": etcd,
                "heartbeat": {"address": host, "port": self.heartbeat_port, "keyring_file": keyring},
                "retry": {"per_try_timeout": 3.0, "max_attempts": 3}}
