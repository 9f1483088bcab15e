"""The router's YAML configuration, validated like a node's (field, value, fix)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.config import (EtcdConfig, _address, _etcd, _int, _key, _mapping, _name, _port,
                          _timing, read_yaml)
from vigil.core.timing import Timing
from vigil.errors import ConfigError


@dataclass(frozen=True)
class RetryConfig:
    max_attempts: int = 3
    per_try_timeout: float = 5.0
    connect_timeout: float = 0.5
    budget_ratio: float = 0.2
    idempotent_paths: tuple[str, ...] = ("/v1/embeddings",)
    idempotency_window: float = 600.0


@dataclass(frozen=True)
class RouterConfig:
    cluster: str
    etcd: EtcdConfig
    key: bytes
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    heartbeat_address: str = "127.0.0.1"
    heartbeat_port: int = 695
    name: str = "router"
    timing: Timing = field(default_factory=Timing)
    retry: RetryConfig = field(default_factory=RetryConfig)
    max_body: int = 16 * 1024 * 1024


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate the router's YAML file. Raises ConfigError."""
    return parse_router_config(read_yaml(path), Path(path).parent)


def parse_router_config(raw: Any, base_dir: Path = Path(".")) -> RouterConfig:
    d = _mapping(raw, "(top level)", {"cluster", "name", "listen", "etcd", "heartbeat", "timing", "retry"})
    listen = _mapping(d.get("listen", {}), "listen", {"host", "port"})
    hb = _mapping(d.get("heartbeat"), "heartbeat", {"address", "port", "key", "key_file"})
    return RouterConfig(
        cluster=_name(d, "cluster"), etcd=_etcd(d.get("etcd")), key=_key(hb, base_dir),
        listen_host=_address(listen.get("host", "127.0.0.1"), "listen.host"),
        listen_port=_port(listen.get("port", 8080), "listen.port"),
        heartbeat_address=_address(hb.get("address", "127.0.0.1"), "heartbeat.address"),
        heartbeat_port=_port(hb.get("port", 695), "heartbeat.port"),
        name=str(d.get("name", "router")), timing=_timing(d.get("timing", {})),
        retry=_retry(d.get("retry", {})))


def _retry(v: Any) -> RetryConfig:
    d = _mapping(v, "retry", {"max_attempts", "per_try_timeout", "connect_timeout", "budget_ratio",
                              "idempotent_paths", "idempotency_window"})
    values: dict[str, Any] = {}
    if "max_attempts" in d:
        values["max_attempts"] = _int(d["max_attempts"], "retry.max_attempts", 1, 10)
    for k in ("per_try_timeout", "connect_timeout", "budget_ratio", "idempotency_window"):
        if k in d:
            x = d[k]
            if isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0:
                raise ConfigError(f"retry.{k}", x, "must be a positive number")
            values[k] = float(x)
    if "idempotent_paths" in d:
        paths = d["idempotent_paths"]
        if not isinstance(paths, list) or not all(isinstance(x, str) and x.startswith("/") for x in paths):
            raise ConfigError("retry.idempotent_paths", paths, "must be a list of paths like /v1/embeddings")
        values["idempotent_paths"] = tuple(paths)
    return RetryConfig(**values)
