"""The `fencing:` section of a node's file: which devices fence which node,
tried in order (levels). Every problem is a ConfigError naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vigil.errors import ConfigError
from vigil.fields import check_address, check_mapping, check_port
from vigil.files import read_secret


@dataclass(frozen=True)
class FencingConfig:
    """Which devices fence which node, tried in order (levels); `race_delay`: see docs."""
    topology: dict[str, tuple[dict[str, Any], ...]]
    race_delay: float = 0.5
    keep_sessions: bool = True  # a standby keeps its BMC session to the leader open (agent/stonith.py)


DEVICE_FIELDS = {"ipmi": {"type", "host", "port", "user", "password", "password_file", "timeout"},
                 "redfish": {"type", "url", "system", "user", "password", "password_file", "timeout"},
                 "null": {"type"}}


def parse_fencing(v: Any, base: Path) -> FencingConfig | None:
    if v is None:
        return None
    d = check_mapping(v, "fencing", {"topology", "race_delay", "keep_sessions"})
    raw = d.get("topology")
    topo = check_mapping(raw, "fencing.topology", set(raw) if isinstance(raw, dict) else set())
    out: dict[str, tuple[dict[str, Any], ...]] = {}
    for node, levels in topo.items():
        where = f"fencing.topology.{node}"
        if isinstance(levels, dict):
            levels = [levels]
        if not isinstance(levels, list) or not levels:
            raise ConfigError(where, levels, "list the devices that fence this node, first tried first")
        out[str(node)] = tuple(_device(lv, f"{where}[{i}]", base) for i, lv in enumerate(levels))
    delay = d.get("race_delay", 0.5)
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 60:
        raise ConfigError("fencing.race_delay", delay, "must be 0..60 seconds")
    keep = d.get("keep_sessions", True)
    if not isinstance(keep, bool):
        raise ConfigError("fencing.keep_sessions", keep, "must be true or false")
    return FencingConfig(out, float(delay), keep)


def _device(v: Any, where: str, base: Path) -> dict[str, Any]:
    kind = v.get("type") if isinstance(v, dict) else None
    if not isinstance(kind, str) or kind not in DEVICE_FIELDS:
        raise ConfigError(f"{where}.type", kind, "must be one of ipmi, redfish, null")
    d = dict(check_mapping(v, where, DEVICE_FIELDS[kind]))
    if "password_file" in d:
        d["password"] = read_secret(base / str(d.pop("password_file")), f"{where}.password_file")
    if "timeout" in d:
        t = d["timeout"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.1 <= t <= 120:
            raise ConfigError(f"{where}.timeout", t, "must be 0.1..120 seconds per device command")
        d["timeout"] = float(t)
    if kind == "ipmi":
        d["host"] = check_address(d.get("host"), f"{where}.host")
        d["port"] = check_port(d.get("port", 623), f"{where}.port")
        if not d.get("user"):
            raise ConfigError(f"{where}.user", d.get("user"), "the BMC user is required")
    if kind == "redfish" and not str(d.get("url", "")).startswith(("http://", "https://")):
        raise ConfigError(f"{where}.url", d.get("url"), "must be the BMC's base URL, http(s)://HOST:PORT")
    return d
