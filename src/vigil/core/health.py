"""Node health verdicts (pure): probe readings in, one verdict with reasons out.

Verdicts, mildest first:
- READY: serve and lead.
- DEGRADED: serve, but never be promoted (a degraded leader hands over when a
  ready member can take the role).
- DRAINING: finish in-flight work, take no new work, hand every role over.
- FAILED: the node must not run anything: it resigns, takes nothing, and its
  peers may fence it.

The policy is a table (XID_CATALOG) plus a few rules over GPU readings, all
configurable through HealthRules. Conditions read from state (a lost GPU, a
remapping pending, a thin thermal margin) last as long as the readings show
them; findings from events (XIDs) hold for `xid_hold` seconds after the last
occurrence, since the event is the only evidence; a thermal slowdown is
DEGRADED at first and DRAINING once it has lasted `slowdown_drain_after`.

A reading that is not available (no GPU on this node) is no finding: a CPU
node is ready by what it has. Application XIDs (13, 31, 43, 45) ask for the
inference server to be restarted, not the node: they are returned as
`actions`, never a worse verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeGuard

READY, DEGRADED, DRAINING, FAILED = "ready", "degraded", "draining", "failed"
VERDICTS = (READY, DEGRADED, DRAINING, FAILED)  # mildest first
SERVING = (READY, DEGRADED)  # the verdicts under which a node takes new work
RESTART_SERVER, RESET_GPU, FENCE = "restart_server", "reset_gpu", "fence"

# NVIDIA's XID catalog (docs.nvidia.com/deploy/xid-errors), condensed to what a
# node should do: (verdict, action, meaning).
XID_CATALOG: dict[int, tuple[str, str, str]] = {
    13: (READY, RESTART_SERVER, "graphics engine exception (application)"),
    31: (READY, RESTART_SERVER, "GPU memory page fault (application)"),
    43: (READY, RESTART_SERVER, "GPU stopped processing (application)"),
    45: (READY, RESTART_SERVER, "preemptive cleanup after earlier errors (application)"),
    48: (DRAINING, RESET_GPU, "double-bit ECC error"),
    61: (DRAINING, RESET_GPU, "internal micro-controller breakpoint"),
    62: (DRAINING, RESET_GPU, "internal micro-controller halt"),
    63: (DRAINING, RESET_GPU, "ECC page retirement or row remapping event"),
    64: (DRAINING, RESET_GPU, "ECC page retirement or row remapping failure"),
    74: (DRAINING, RESET_GPU, "NVLink error"),
    79: (FAILED, FENCE, "GPU has fallen off the bus"),
    92: (DRAINING, RESET_GPU, "high single-bit ECC error rate"),
    94: (DRAINING, RESET_GPU, "contained ECC error"),
    95: (DRAINING, RESET_GPU, "uncontained ECC error"),
    119: (DRAINING, RESET_GPU, "GSP RPC timeout"),
    120: (DRAINING, RESET_GPU, "GSP error"),
    140: (DRAINING, RESET_GPU, "unrecovered ECC error"),
}
DRAIN_ACTIONS = {"gpu_reset", "node_reboot", "drain_p2p", "drain_and_reset", "recover_imex_domain",
                 "bus_reset", "system_reboot"}
THERMAL_EVENTS = {"hw_slowdown", "sw_thermal", "hw_thermal", "power_brake"}


@dataclass(frozen=True)
class HealthRules:
    """The policy's knobs (config `health:`); every verdict is one of VERDICTS."""
    xid: dict[int, str] = field(default_factory=dict)  # overrides of XID_CATALOG's verdicts
    unknown_xid: str = DEGRADED
    xid_hold: float = 600.0  # s an XID finding lasts after its last occurrence
    margin_degraded_c: float = 5.0  # GPU thermal margin (to slowdown) at or below which: degraded
    margin_draining_c: float = 2.0  # ... and draining
    slowdown_drain_after: float = 60.0  # s of thermal clock slowdown before draining
    ecc_uncorrected: str = DEGRADED  # volatile uncorrected ECC errors since the driver loaded


@dataclass(frozen=True)
class Finding:
    verdict: str
    reason: str
    action: str = ""
    # A drain that may wait for the drain budget (vigil.core.drain_budget): XIDs, heat,
    # the facility. One that may not: a workload the node cannot run.
    deferrable: bool = True


@dataclass(frozen=True)
class Verdict:
    state: str = READY
    reasons: tuple[str, ...] = ()  # why it is not READY (empty when it is)
    actions: tuple[str, ...] = ()  # "restart_server: XID 13 on GPU 0 ..." - asked of the agent
    alarms: tuple[str, ...] = ()  # told to the operator, never a reason to move work (a sensor fault)
    deferrable: bool = False  # a drain every finding of which may wait for the drain budget
    deferred: bool = False  # a drain held back by the drain budget (then `state` is degraded)
    deferred_since: float = 0.0  # wall time the drain started waiting

    @property
    def may_lead(self) -> bool:
        return self.state == READY

    @property
    def serves(self) -> bool:
        return self.state in SERVING

    def to_json(self) -> dict[str, str | float | list[str]]:
        return {"verdict": self.state, "reasons": list(self.reasons), "actions": list(self.actions),
                "alarms": list(self.alarms),
                **({"drain": "deferred", "drain_since": self.deferred_since} if self.deferred else {})}


def worst(findings: Iterable[Finding]) -> Verdict:
    found = list(findings)
    state = max((f.verdict for f in found), key=VERDICTS.index, default=READY)
    return Verdict(state, tuple(f.reason for f in found if f.verdict != READY),
                   tuple(f"{f.action}: {f.reason}" for f in found if f.action),
                   tuple(f.reason for f in found if f.verdict == READY and not f.action),
                   state == DRAINING and all(f.deferrable for f in found if f.verdict == DRAINING))


def incompatible(mismatches: list[str]) -> list[Finding]:
    """The compatibility gate's answer (vigil.core.compat) as findings: a node that
    cannot run the workload takes none of its work and none of its roles."""
    return [Finding(DRAINING, f"incompatible with the workload: {m}", deferrable=False) for m in mismatches]


def more_severe(a: str, b: str) -> str:
    return max(a, b, key=VERDICTS.index)


class ProbeReading(Protocol):
    """What the policy reads of a probe's Reading (vigil.probes.base.Reading)."""

    @property
    def source(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def values(self) -> Mapping[str, object]: ...


class FacilityJudge(Protocol):
    """Judges the "sensors" reading (vigil.core.facility.FacilityPolicy)."""

    def judge(self, values: Mapping[str, object], now: float) -> list[Finding]: ...


class _Limit(Protocol):
    @property
    def limit_c(self) -> float: ...


class GpuTrend(Protocol):
    """One GPU's temperature trend (vigil.core.thermal.ThermalTrend)."""

    @property
    def rules(self) -> _Limit: ...
    def add(self, now: float, temperature: float, load: float | None = None) -> None: ...
    def judge(self) -> Finding | None: ...


class HealthPolicy:
    """`judge(readings, now)` -> Verdict. Keeps only what time needs: when each
    XID was last seen, since when each GPU has been slowing down."""

    def __init__(self, rules: HealthRules | None = None, facility: FacilityJudge | None = None,
                 gpu_trend: Callable[[str, float], GpuTrend] | None = None):
        """`facility`: judges the "sensors" reading (vigil.core.facility.FacilityPolicy);
        `gpu_trend(name, limit_c)`: a trend (vigil.core.thermal.ThermalTrend with
        gpu_rules) per GPU, against its slowdown threshold: a GPU whose cooling
        failed drains before it slows down."""
        self.rules, self.facility, self.gpu_trend = rules or HealthRules(), facility, gpu_trend
        self._trends: dict[str, GpuTrend] = {}
        self._xids: dict[tuple[str, int], tuple[float, str]] = {}  # (gpu, xid) -> (last seen, detail)
        self._slowdown_since: dict[str, float] = {}
        self._fresh: set[tuple[str, int]] = set()

    def judge(self, readings: Iterable[ProbeReading], now: float, extra: Iterable[Finding] = ()) -> Verdict:
        """The verdict over `readings` (probe Readings) and findings judged elsewhere."""
        findings: list[Finding] = list(extra)
        self._fresh = set()  # XIDs that arrived in these readings
        for r in readings:
            if not r.available:
                continue
            if r.source == "gpu":
                gpus = r.values.get("gpus") or []
                if not isinstance(gpus, Iterable):
                    raise _not_iterable(gpus)
                findings += self._gpus(gpus, now)
            elif r.source == "sensors" and self.facility is not None:
                findings += self.facility.judge(r.values, now)
            xids = r.values.get("xids") or []  # NVML's events and the kernel log's lines
            if not isinstance(xids, Iterable):
                raise _not_iterable(xids)
            self._note_xids(xids, now)
        findings += self._xid_findings(now)
        return worst(findings)

    # -- XIDs ----------------------------------------------------------------
    def xid_finding(self, xid: int, where: str) -> Finding:
        verdict, action, meaning = XID_CATALOG.get(xid, (self.rules.unknown_xid, "", ""))
        verdict = self.rules.xid.get(xid, verdict)
        what = meaning or "not in the catalog; look it up in NVIDIA's XID catalog"
        return Finding(verdict, f"XID {xid} on {where}: {what}", action)

    def _note_xids(self, events: Iterable[Mapping[str, object]], now: float) -> None:
        for e in events:
            xid = e.get("xid")
            if isinstance(xid, int) and not isinstance(xid, bool):
                where = e.get("gpu") or e.get("pci") or "an unnamed GPU"
                self._xids[(str(where), xid)] = (now, str(e.get("detail") or ""))
                self._fresh.add((str(where), xid))

    def _xid_findings(self, now: float) -> list[Finding]:
        hold = self.rules.xid_hold
        self._xids = {k: v for k, v in self._xids.items() if now - v[0] < hold}
        out = []
        for (where, xid), (seen, _) in sorted(self._xids.items()):
            f = self.xid_finding(xid, f"GPU {where}")
            suffix = f" ({now - seen:.0f} s ago; holds {hold:g} s)"
            out.append(Finding(f.verdict, f.reason + suffix, f.action if (where, xid) in self._fresh else ""))
        return out

    # -- GPU state -----------------------------------------------------------
    def _gpus(self, gpus: Iterable[Mapping[str, object]], now: float) -> list[Finding]:
        out: list[Finding] = []
        slowing = set()
        for g in gpus:
            name = f"GPU {g.get('index', '?')}"
            if g.get("lost"):
                out.append(Finding(FAILED, f"{name} is lost (fell off the bus or needs a reset)", FENCE))
                continue
            out += self._memory(name, g) + self._recovery(name, g) + self._thermal(name, g, now)
            if THERMAL_EVENTS & set(_list(g.get("clock_events"))):
                slowing.add(name)
                out.append(self._slowdown(name, g, now))
            links = [x for x in _list(g.get("nvlink")) if isinstance(x, dict) and x.get("active") is False]
            if links:
                out.append(Finding(DEGRADED, f"{name}: NVLink {', '.join(str(x.get('link')) for x in links)} down"))
        self._slowdown_since = {k: v for k, v in self._slowdown_since.items() if k in slowing}
        return out

    def _memory(self, name: str, g: Mapping[str, object]) -> list[Finding]:
        out = []
        rows = g.get("remapped_rows")
        rows = rows if isinstance(rows, dict) else {}
        if rows.get("failure"):
            out.append(Finding(DRAINING, f"{name}: row remapping failed (the GPU needs service)", RESET_GPU))
        elif rows.get("pending"):
            out.append(Finding(DRAINING, f"{name}: row remapping pending (takes effect at the next GPU reset)",
                               RESET_GPU))
        pages = g.get("retired_pages")
        pages = pages if isinstance(pages, dict) else {}
        if pages.get("pending"):
            out.append(Finding(DRAINING, f"{name}: page retirement pending (takes effect at the next GPU reset)",
                               RESET_GPU))
        ecc = g.get("ecc_uncorrected_volatile")
        if _number(ecc) and ecc > 0:
            out.append(Finding(self.rules.ecc_uncorrected, f"{name}: {ecc} uncorrected ECC errors since the "
                                                           "driver loaded"))
        return out

    def _recovery(self, name: str, g: Mapping[str, object]) -> list[Finding]:
        action = g.get("recovery_action")
        fabric = g.get("fabric_state")
        out = []
        if isinstance(action, str) and action not in ("none", "not_supported"):
            why = "" if action in DRAIN_ACTIONS else " (an unknown value: treated as drain)"
            out.append(Finding(DRAINING, f"{name}: NVML asks for recovery action {action}{why}", action))
        if isinstance(fabric, str) and fabric not in ("completed", "not_supported"):
            out.append(Finding(DRAINING, f"{name}: fabric manager {fabric} (not ready until completed)"))
        return out

    def _thermal(self, name: str, g: Mapping[str, object], now: float) -> list[Finding]:
        margin, r = g.get("thermal_margin_c"), self.rules
        if not _number(margin):
            return []
        t, slow = g.get("temperature_c"), g.get("slowdown_c")
        trend = self._trend(name, slow, t, g.get("power_w"), now)
        if trend:
            return [trend]
        if margin <= r.margin_draining_c:
            return [Finding(DRAINING, f"{name}: {t} °C, {margin} °C below its slowdown threshold {slow} °C "
                                      f"(drain at <= {r.margin_draining_c:g})")]
        if margin <= r.margin_degraded_c:
            return [Finding(DEGRADED, f"{name}: {t} °C, {margin} °C below its slowdown threshold {slow} °C")]
        return []

    def _trend(self, name: str, limit: object, temperature: object, power: object, now: float) -> Finding | None:
        if self.gpu_trend is None or not (_number(limit) and _number(temperature)):
            return None
        trend = self._trends.get(name)
        if trend is None or trend.rules.limit_c != limit:
            trend = self._trends[name] = self.gpu_trend(name, float(limit))
        trend.add(now, float(temperature), float(power) if _number(power) else None)
        finding: Finding | None = trend.judge()
        return finding

    def _slowdown(self, name: str, g: Mapping[str, object], now: float) -> Finding:
        since = self._slowdown_since.setdefault(name, now)
        events = ", ".join(sorted(THERMAL_EVENTS & set(_list(g.get("clock_events")))))
        lasted = now - since
        if lasted >= self.rules.slowdown_drain_after:
            return Finding(DRAINING, f"{name}: clocks slowed ({events}) for {lasted:.0f} s")
        return Finding(DEGRADED, f"{name}: clocks slowed ({events}) for {lasted:.0f} s; draining after "
                                 f"{self.rules.slowdown_drain_after:g} s")


def _list(v: object) -> list[object]:
    return v if isinstance(v, list) else []


def _not_iterable(v: object) -> TypeError:
    """What a for loop raises over `v`: a reading no probe writes fails the round as it always did."""
    return TypeError(f"{type(v).__name__!r} object is not iterable")


def _number(v: object) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
