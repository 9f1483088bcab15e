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

A GPU heats from idle to its working temperature at the start of every job
and then levels off; extrapolating that rise would drain busy nodes. So a
GPU's trend (`gpu_rules`: a 30 s window) waits for a whole window of
samples and predicts only for a rise at a steady load (its power draw
within 15 % for the last 90 s: more heat from more work is a warm-up) that
does not level off below the limit (the level an exponential approach is
heading for, from the means of the window's thirds): a fan or a cooling
loop that failed. A busy GPU with a swinging load is left to NVML's own
thresholds.

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
    min_span: float = 0.0  # s of samples before any prediction (GPUs: the whole window)
    asymptote: bool = False  # no prediction for a rise levelling off below the limit (GPUs)
    steady_load: float = 0.0  # > 0: no prediction unless the load stayed within this fraction ...
    steady_for: float = 0.0  # ... for this many seconds (GPUs: 90)
    allowable: tuple[float, float] = (15.0, 32.0)  # ASHRAE A1
    recommended: tuple[float, float] = (18.0, 27.0)


def gpu_rules(limit_c: float, drain_time: float, margin: float) -> ThermalRules:
    """A GPU judged against its slowdown threshold (read from NVML), see above."""
    return ThermalRules(limit_c=limit_c, drain_time=drain_time, margin=margin, window=60.0, min_span=58.0,
                        asymptote=True, steady_load=0.15, steady_for=90.0, confirm=5,
                        min_slope=0.02, allowable=(-273.0, 1000.0), recommended=(-273.0, 1000.0))


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
        self._loads: deque[tuple[float, float | None]] = deque()
        self._votes = 0
        self.draining = False

    def add(self, now: float, temperature: float, load: float | None = None) -> None:
        """One sample; `load` (a GPU's power draw) tells a warm-up from a runaway."""
        self._samples.append((now, float(temperature)))
        self._loads.append((now, load))
        while self._samples and now - self._samples[0][0] > self.rules.window:
            self._samples.popleft()
        while self._loads and now - self._loads[0][0] > max(self.rules.window, self.rules.steady_for):
            self._loads.popleft()

    def trend(self) -> Trend | None:
        """The fit over the window; None until `min_samples` samples span
        `min_span` seconds."""
        pts, r = list(self._samples), self.rules
        if len(pts) < r.min_samples or pts[-1][0] - pts[0][0] < r.min_span:
            return None
        fit = _fit(pts)
        if fit is None:
            return None
        slope, stderr = fit
        latest = pts[-1][1]
        rising = (slope > max(r.min_slope, r.sigmas * stderr) and self._load_steady()
                  and not self._levelling_off(pts))
        eta = max(0.0, (r.limit_c - latest) / slope) if rising else None
        return Trend(latest, slope, stderr, eta)

    def _load_steady(self) -> bool:
        """With `steady_load`: the load stayed within that fraction for the last
        `steady_for` seconds (heat from more work is a warm-up, and a warm-up
        needs a while to show where it levels off; at the same work, a rise is
        a cooling fault)."""
        r = self.rules
        if not r.steady_load:
            return True
        if not self._loads or self._loads[-1][0] - self._loads[0][0] < r.steady_for - 1:
            return False
        loads = [x for _, x in self._loads if x is not None and x > 0]
        if len(loads) < len(self._loads):  # a load unknown or zero: not steady
            return False
        return max(loads) / min(loads) - 1 <= r.steady_load

    def _levelling_off(self, pts: list[tuple[float, float]]) -> bool:
        """With `asymptote`: the rise decelerates toward a level below the limit.
        The level of an exponential approach from the means of the window's
        thirds (Aitken's delta-squared): m3 + d2^2 / (d1 - d2), d1 = m2 - m1,
        d2 = m3 - m2; a rise that keeps its pace or speeds up has no level."""
        if not self.rules.asymptote:
            return False
        t0, span = pts[0][0], pts[-1][0] - pts[0][0]
        thirds = [[y for t, y in pts if k * span / 3 <= t - t0 < (k + 1) * span / 3 or (k == 2 and t - t0 == span)]
                  for k in range(3)]
        if not all(thirds):
            return True
        m1, m2, m3 = (sum(x) / len(x) for x in thirds)
        d1, d2 = m2 - m1, m3 - m2
        if d2 <= 0:
            return True
        return d2 < d1 and m3 + d2 * d2 / (d1 - d2) < self.rules.limit_c

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


def _fit(pts: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(slope, its standard error) of a least-squares line; None without spread."""
    n = len(pts)
    if n < 3:
        return None
    mt = sum(t for t, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((t - mt) ** 2 for t, _ in pts)
    if sxx <= 0:
        return None
    slope = sum((t - mt) * (y - my) for t, y in pts) / sxx
    resid = sum((y - (my + slope * (t - mt))) ** 2 for t, y in pts)
    return slope, math.sqrt(resid / (n - 2) / sxx)


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
