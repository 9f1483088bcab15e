"""Facility sensors judged (pure): rack inlet temperatures and PLC fault codes
read over Modbus/TCP (vigil.probes.modbus) become findings.

Rules:
- A valid inlet temperature feeds a ThermalTrend (drain before the limit) and
  the envelope check (outside the ASHRAE ranges: an alarm).
- A sensor fault (NAMUR NE 43: a wire break is not 0 °C), a silent PLC, a
  garbage answer or an unknown fault code is an *alarm*: told, counted, and
  never by itself a reason to move work (a READY finding). The trend of a
  faulty sensor keeps its samples but gets no new ones.
- A fault code maps to the verdict the operator configured (e.g. 0x88, a
  power imbalance: draining); code 0 is no fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vigil.core.health import READY, Finding
from vigil.core.records import number
from vigil.core.thermal import ThermalRules, ThermalTrend, inlet_alarm

INLET_TEMP, FAULT_CODE = "inlet_temp", "fault_code"


@dataclass(frozen=True)
class PointRules:
    kind: str  # INLET_TEMP | FAULT_CODE
    thermal: ThermalRules = field(default_factory=ThermalRules)
    codes: dict[int, tuple[str, str]] = field(default_factory=dict)  # code -> (verdict, meaning)


class FacilityPolicy:
    def __init__(self, points: dict[str, PointRules]):
        self.points = points
        self.trends = {name: ThermalTrend(name, r.thermal) for name, r in points.items() if r.kind == INLET_TEMP}

    def judge(self, values: object, now: float) -> list[Finding]:
        """Findings for one sensors reading: values["points"][name] = {"valid",
        "value", "problem"} as vigil.probes.modbus reads them. Total: whatever the
        reading holds, a point that is not a valid number is an alarm."""
        out: list[Finding] = []
        raw = values.get("points") if isinstance(values, dict) else None
        points: dict[str, object] = raw if isinstance(raw, dict) else {}
        for name, rules in sorted(self.points.items()):
            point = points.get(name)
            if not isinstance(point, dict):
                point = {"valid": False, "problem": "not read"}
            if not point.get("valid"):
                out.append(Finding(READY, f"{name}: {str(point.get('problem') or 'no valid value')[:200]} "
                                          "(alarm only: a faulty sensor never moves work)"))
                continue
            value = point.get("value")
            if not number(value, -1e9, 1e9):
                out.append(Finding(READY, f"{name}: value {str(value)[:40]!r} is not a number (alarm only)"))
                continue
            if rules.kind == INLET_TEMP:
                out += self._inlet(name, float(value), rules, now)
            else:
                out += self._fault(name, int(value), rules)
        return out

    def _inlet(self, name: str, temperature: float, rules: PointRules, now: float) -> list[Finding]:
        trend = self.trends[name]
        trend.add(now, temperature)
        out = [f for f in (trend.judge(),) if f is not None]
        alarm = inlet_alarm(name, temperature, rules.thermal)
        return out + ([Finding(READY, alarm)] if alarm else [])

    def _fault(self, name: str, code: int, rules: PointRules) -> list[Finding]:
        if code == 0:
            return []
        if code not in rules.codes:
            return [Finding(READY, f"{name}: fault code 0x{code:02X} is not mapped (add it to the point's "
                                   "`codes` to act on it)")]
        verdict, meaning = rules.codes[code]
        return [Finding(verdict, f"{name}: fault code 0x{code:02X}" + (f" ({meaning})" if meaning else ""))]
