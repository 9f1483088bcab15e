"""Thermal inertia (pure): drain a node *before* it reaches its thermal limit.

A cooling failure heats a rack over minutes; draining a busy node takes
seconds to minutes. `ThermalTrend` fits a least-squares line to the last
`window` seconds of one temperature (a GPU's, or the rack inlet's) and
predicts the time until it reaches `limit_c`. When that prediction falls
below the node's drain time plus a margin, the node drains.

Against a noisy sensor:
- the slope must be significant (at least `sigmas` standard errors of the fit
  above zero, and above `min_slope`), so a flat but noisy signal never
  predicts a crossing;
- the prediction must hold for `confirm` consecutive judgements to start a
  drain;
- a drain clears only when the prediction is `clear_factor` times the
  needed lead again (or the slope is gone) and the temperature is
  `hysteresis_c` below the limit (hysteresis).
A temperature already at or above the limit drains at once.

`inlet_alarm` checks the rack inlet against the ASHRAE envelope (A1
allowable 15-32 °C, recommended 18-27 °C): outside either it is an alarm,
told to the operator and never a verdict by itself.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from vigil.core.health import DRAINING, Finding


@dataclass(frozen=True)
class ThermalRules:
    limit_c: float = 32.0  # judged against: a GPU's slowdown threshold, or the inlet allowable maximum
    drain_time: float = 30.0  # s this node needs to drain (measured; lab default)
    margin: float = 30.0  # s of lead beyond the drain time
    window: float = 60.0  # s of samples the fit uses
    min_samples: int = 5
    sigmas: float = 3.0
    min_slope: float = 0.01  # °C/s below which nothing is predicted
    confirm: int = 3
    clear_factor: float = 2.0
    hysteresis_c: float = 1.0
    allowable: tuple[float, float] = (15.0, 32.0)  # ASHRAE A1
    recommended: tuple[float, float] = (18.0, 27.0)


@dataclass(frozen=True)
class Trend:
    temperature: float  # the latest sample
    slope: float  # °C/s, least squares over the window
    stderr: float  # of the slope
    seconds_to_limit: float | None  # None: no significant rise


class ThermalTrend:
    def __init__(self, name: str, rules: ThermalRules | None = None):
        self.name, self.rules = name, rules or ThermalRules()
        self._samples: deque[tuple[float, float]] = deque()
        self._votes = 0
        self.draining = False

    def add(self, now: float, temperature: float) -> None:
        self._samples.append((now, float(temperature)))
        while self._samples and now - self._samples[0][0] > self.rules.window:
            self._samples.popleft()

    def trend(self) -> Trend | None:
        """The fit over the window; None until `min_samples` samples span time."""
        pts = self._samples
        if len(pts) < self.rules.min_samples:
            return None
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        my = sum(y for _, y in pts) / n
        sxx = sum((t - mt) ** 2 for t, _ in pts)
        if sxx <= 0:
            return None
        slope = sum((t - mt) * (y - my) for t, y in pts) / sxx
        resid = sum((y - (my + slope * (t - mt))) ** 2 for t, y in pts)
        stderr = math.sqrt(resid / (n - 2) / sxx) if n > 2 else math.inf
        latest = pts[-1][1]
        rising = slope > max(self.rules.min_slope, self.rules.sigmas * stderr)
        eta = max(0.0, (self.rules.limit_c - latest) / slope) if rising else None
        return Trend(latest, slope, stderr, eta)

    def judge(self) -> Finding | None:
        """DRAINING while a crossing is predicted inside the lead (see the
        module's rules), else None."""
        r, tr = self.rules, self.trend()
        if tr is None:
            return None
        lead = r.drain_time + r.margin
        if tr.temperature >= r.limit_c:
            self.draining, self._votes = True, r.confirm
            return Finding(DRAINING, f"{self.name}: {tr.temperature:.1f} °C, at or above its limit {r.limit_c:g} °C")
        soon = tr.seconds_to_limit is not None and tr.seconds_to_limit < lead
        self._votes = min(r.confirm, self._votes + 1) if soon else 0
        if not self.draining and self._votes >= r.confirm:
            self.draining = True
        elif self.draining and not soon:
            clear = (tr.seconds_to_limit is None or tr.seconds_to_limit >= r.clear_factor * lead)
            if clear and tr.temperature <= r.limit_c - r.hysteresis_c:
                self.draining = False
        if not self.draining:
            return None
        eta = f"{tr.seconds_to_limit:.0f} s" if tr.seconds_to_limit is not None else "no longer predicted"
        return Finding(DRAINING, f"{self.name}: {tr.temperature:.1f} °C rising {tr.slope * 60:.1f} °C/min, "
                                 f"limit {r.limit_c:g} °C in {eta} (draining takes {r.drain_time:g} s "
                                 f"+ {r.margin:g} s margin)")


def inlet_alarm(name: str, temperature: float, rules: ThermalRules | None = None) -> str:
    """An alarm's text when the inlet is outside the ASHRAE envelope ("" inside the
    recommended range). An alarm moves nothing: a hot rack drains by its trend,
    which reaches the allowable maximum (the default limit) first."""
    r = rules or ThermalRules()
    lo, hi = r.allowable
    if not lo <= temperature <= hi:
        return f"{name}: inlet {temperature:.1f} °C outside the allowable {lo:g}-{hi:g} °C (ASHRAE A1)"
    rlo, rhi = r.recommended
    if not rlo <= temperature <= rhi:
        return f"{name}: inlet {temperature:.1f} °C outside the recommended {rlo:g}-{rhi:g} °C"
    return ""
