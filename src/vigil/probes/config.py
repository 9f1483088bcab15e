"""The `health:` section of a node's file: which probes run, how often, the
policy's rules (vigil.core.health) and the workload's requirements (the
compatibility gate, vigil.core.compat). Every problem is a ConfigError
naming the field and the fix.

    health:
      interval: 1.0            # s between probe rounds
      gpu: auto                # auto: NVML when the driver is there | off
      kernel_log: auto         # NVRM Xid lines: auto (/dev/kmsg) | off | /path of kernel records
      xid: {13: draining}      # verdict overrides of NVIDIA's catalog
      unknown_xid: degraded
      xid_hold: 600
      margin_degraded_c: 5     # GPU thermal margin to its slowdown threshold
      margin_draining_c: 2
      slowdown_drain_after: 60
      requires: {cuda_driver: ">=12.1", gpu_memory_mib: ">=40000"}
      declare: {model_digest: "sha256:..."}   # fingerprint values no probe can read
      flap_threshold: 3        # failures within flap_window that hold a node out (0: never;
      flap_window: 600         #   the leader's setting applies)
      drain_time: 30           # s this node needs to drain (the thermal trend's lead)
      drain_margin: 30
      drain_budget: 0.34       # at most this share of the cluster and of each failure domain
                               #   out for health at once; a drain beyond it waits, degraded
      sensors:                 # facility sensors over Modbus/TCP (vigil.probes.modbus)
        - {name: inlet, kind: inlet_temp, host: 10.0.0.5, port: 502, unit: 1, register: 0,
           table: holding, data: uint16, signal: 4-20mA, raw_per_unit: 100, range: [0, 50],
           limit_c: 32}
        - {name: psu, kind: fault_code, host: 10.0.0.5, port: 502, register: 1,
           codes: {0x88: [draining, power imbalance]}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vigil.core.compat import parse_requirement
from vigil.core.damping import DampingRules
from vigil.core.drain_budget import DrainBudget
from vigil.core.facility import FAULT_CODE, INLET_TEMP, PointRules
from vigil.core.health import VERDICTS, HealthRules
from vigil.core.thermal import ThermalRules
from vigil.errors import ConfigError
from vigil.fields import check_address, check_int, check_mapping, check_name, check_port
from vigil.probes.modbus import WORDS, SensorPoint

KMSG = "/dev/kmsg"
SECONDS = {"xid_hold": (1.0, 86400.0), "slowdown_drain_after": (0.0, 3600.0)}
DEGREES = ("margin_degraded_c", "margin_draining_c")


@dataclass(frozen=True)
class HealthConfig:
    interval: float = 1.0
    gpu: bool = True
    kernel_log: str = KMSG  # where XID lines are read ("": nowhere)
    rules: HealthRules = field(default_factory=HealthRules)
    requires: dict[str, Any] = field(default_factory=dict)
    declare: dict[str, Any] = field(default_factory=dict)
    damping: DampingRules = field(default_factory=DampingRules)
    lead: ThermalRules = field(default_factory=ThermalRules)  # drain_time and margin of every trend
    sensors: tuple[SensorPoint, ...] = ()
    facility: dict[str, PointRules] = field(default_factory=dict)
    drain_budget: DrainBudget = field(default_factory=DrainBudget)


def parse_health(v: Any) -> HealthConfig:
    if v is None:
        return HealthConfig()
    d = check_mapping(v, "health", {"interval", "gpu", "kernel_log", "xid", "unknown_xid", "requires",
                                    "declare", "sensors", "drain_time", "drain_margin", "flap_threshold",
                                    "flap_window", "drain_budget", *SECONDS, *DEGREES})
    interval = _number(d, "interval", 1.0, 0.1, 60.0)
    rules: dict[str, Any] = {k: _number(d, k, getattr(HealthRules, k), lo, hi) for k, (lo, hi) in SECONDS.items()}
    rules.update({k: _number(d, k, getattr(HealthRules, k), 0.0, 50.0) for k in DEGREES})
    if rules["margin_draining_c"] > rules["margin_degraded_c"]:
        raise ConfigError("health.margin_draining_c", rules["margin_draining_c"],
                          "must not exceed health.margin_degraded_c (draining is the worse state)")
    rules["xid"] = _xids(d.get("xid", {}))
    rules["unknown_xid"] = _verdict(d.get("unknown_xid", "degraded"), "health.unknown_xid")
    try:
        requires = parse_requirement(d.get("requires", {}))
    except ValueError as e:
        raise ConfigError("health.requires", d.get("requires"), str(e)) from None
    declare = d.get("declare", {})
    if not isinstance(declare, dict) or not all(isinstance(v, (str, int, float)) for v in declare.values()):
        raise ConfigError("health.declare", declare, "map fingerprint keys to values, e.g. {model_digest: 'sha256:...'}")
    lead = ThermalRules(drain_time=_number(d, "drain_time", 30.0, 0.0, 3600.0),
                        margin=_number(d, "drain_margin", 30.0, 0.0, 3600.0))
    points, facility = parse_sensors(d.get("sensors", []), lead)
    damping = DampingRules(check_int(d.get("flap_threshold", 3), "health.flap_threshold", 0, 100),
                           _number(d, "flap_window", 600.0, 1.0, 86400.0))
    share = d.get("drain_budget", DrainBudget.share)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.01 <= share <= 1:
        raise ConfigError("health.drain_budget", share, "must be a share from 0.01 to 1: how much of the "
                          "cluster, and of each failure domain, may drain for health at once (1: no limit)")
    budget = DrainBudget(float(share))
    return HealthConfig(interval, _switch(d, "gpu"), _kernel_log(d.get("kernel_log", "auto")), HealthRules(**rules),
                        requires,
                        {str(k): v for k, v in declare.items()}, damping, lead, points, facility, budget)


def _number(d: dict[str, Any], key: str, default: float, lo: float, hi: float, where: str = "health") -> float:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{where}.{key}", v, f"must be a number from {lo:g} to {hi:g}")
    return float(v)


def _switch(d: dict[str, Any], key: str) -> bool:
    v = d.get(key, "auto")
    if v not in ("auto", "off", True, False):
        raise ConfigError(f"health.{key}", v, "must be auto or off")
    return v in ("auto", True)


def _kernel_log(v: Any) -> str:
    """auto: the kernel's own log; off: none; an absolute path: a file or device of
    kernel records to follow instead (a container's mirrored log, a lab node's own)."""
    if v in ("auto", True):
        return KMSG
    if v in ("off", False):
        return ""
    if isinstance(v, str) and v.startswith("/") and len(v) <= 4096 and "\0" not in v:
        return v
    raise ConfigError("health.kernel_log", v, "must be auto (/dev/kmsg), off, or the absolute path of a "
                      "kernel log to follow")


def _verdict(v: Any, where: str) -> str:
    if v not in VERDICTS:
        raise ConfigError(where, v, f"must be one of {', '.join(VERDICTS)}")
    return str(v)


def _xids(v: Any) -> dict[int, str]:
    if not isinstance(v, dict):
        raise ConfigError("health.xid", v, "map XID numbers to verdicts, e.g. {13: draining}")
    out = {}
    for k, verdict in v.items():
        try:
            xid = int(k)
        except (TypeError, ValueError):
            raise ConfigError(f"health.xid.{k}", k, "XIDs are numbers, e.g. 79") from None
        out[xid] = _verdict(verdict, f"health.xid.{k}")
    return out


POINT_FIELDS = {"name", "kind", "host", "port", "unit", "register", "table", "data", "signal", "raw_per_unit",
                "range", "timeout", "limit_c", "codes"}


def parse_sensors(v: Any, lead: ThermalRules) -> tuple[tuple[SensorPoint, ...], dict[str, PointRules]]:
    if not isinstance(v, list):
        raise ConfigError("health.sensors", v, "a list of points, each {name, kind, host, port, register, ...}")
    points, rules = [], {}
    for i, raw in enumerate(v):
        where = f"health.sensors[{i}]"
        d = check_mapping(raw, where, POINT_FIELDS)
        name = check_name(d, "name", f"{where}.name")
        if name in rules:
            raise ConfigError(f"{where}.name", name, "point names must be unique")
        kind = _choice(d, "kind", where, (INLET_TEMP, FAULT_CODE), None)
        point = SensorPoint(
            name, kind, check_address(d.get("host"), f"{where}.host"), check_port(d.get("port", 502), f"{where}.port"),
            check_int(d.get("register"), f"{where}.register", 0, 65535), check_int(d.get("unit", 1), f"{where}.unit", 0, 255),
            _choice(d, "table", where, ("holding", "input"), "holding"), _choice(d, "data", where, tuple(WORDS), "uint16"),
            _choice(d, "signal", where, ("4-20mA", "0-10V", "raw"), "raw" if kind == FAULT_CODE else "4-20mA"),
            _number(d, "raw_per_unit", 100.0 if kind == INLET_TEMP else 1.0, 1e-6, 1e6, where),
            _range(d.get("range", [0, 50]), f"{where}.range"), _number(d, "timeout", 0.5, 0.05, 10.0, where))
        limit = _number(d, "limit_c", 32.0, -50.0, 150.0, where)
        points.append(point)
        rules[name] = PointRules(kind, ThermalRules(limit_c=limit, drain_time=lead.drain_time, margin=lead.margin),
                                 _codes(d.get("codes", {}), f"{where}.codes"))
    return tuple(points), rules


def _choice(d: dict[str, Any], key: str, where: str, allowed: tuple[str, ...], default: str | None) -> str:
    v = d.get(key, default)
    if v not in allowed:
        raise ConfigError(f"{where}.{key}", v, f"must be one of {', '.join(allowed)}")
    return str(v)


def _range(v: Any, where: str) -> tuple[float, float]:
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v) and v[0] != v[1]):
        raise ConfigError(where, v, "the engineering values at the signal's two ends, e.g. [0, 50]")
    return float(v[0]), float(v[1])


def _codes(v: Any, where: str) -> dict[int, tuple[str, str]]:
    if not isinstance(v, dict):
        raise ConfigError(where, v, "map fault codes to [verdict, meaning], e.g. {0x88: [draining, power imbalance]}")
    out = {}
    for code, spec in v.items():
        verdict, meaning = (spec, "") if isinstance(spec, str) else (spec + ["", ""])[:2] if isinstance(spec, list) \
            else (None, "")
        if not isinstance(code, int) or isinstance(code, bool) or not 0 < code <= 65535:
            raise ConfigError(f"{where}.{code}", code, "fault codes are numbers 1..65535 (0 is no fault)")
        out[code] = (_verdict(verdict, f"{where}.{code}"), str(meaning))
    return out

