"""The node's health monitor: runs the probes (GPU over NVML, the kernel
log's XIDs) every `health.interval` in a worker thread (NVML calls block),
judges the readings with the pure policy (vigil.core.health) and keeps the
verdict and fingerprint the agent publishes in its member record.

Contract:
- `start()` runs one round before it returns, so the first member record
  already carries the verdict and the fingerprint; a probe never raises
  (vigil.probes.base), and a round that fails anyway keeps the last verdict
  and is reported once (`health_round_failed`).
- Every change of verdict is an event (`health_verdict`, with the reasons)
  and calls `on_change` (the agent republishes its record and reconsiders
  its roles at once).
- What the policy asks beyond a verdict (restart the inference server, reset
  a GPU) is an event `health_action`; the inference server restart is done.
- `verdict` is the policy's verdict through the drain budget
  (vigil.core.drain_budget): a drain the budget has no place for is
  published as degraded until one frees; `see_members` gives the gate each
  snapshot's member records and applies it again at once (a place that
  frees is taken on the next snapshot, not the next round). Once
  `claim_places` is called, a place is also claimed in etcd before the
  drain goes ahead and given back when it ends (vigil.agent.drain_place).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from vigil.agent.drain_place import PlaceKeeper
from vigil.clock import Clock
from vigil.core.compat import mismatches
from vigil.core.drain_budget import DrainGate
from vigil.core.facility import FacilityPolicy
from vigil.core.thermal import ThermalTrend, gpu_rules
from vigil.core.health import RESTART_SERVER, HealthPolicy, Verdict, incompatible
from vigil.probes.base import Probe, Reading
from vigil.probes.config import HealthConfig
from vigil.probes.fingerprint import node_fingerprint
from vigil.probes.gpu import GpuProbe
from vigil.probes.modbus import ModbusSensors
from vigil.probes.xid import KmsgXids
from vigil.store.drain_places import DrainPlaces
from vigil.tasks import cancel_and_wait

log = logging.getLogger(__name__)


def default_probes(cfg: HealthConfig) -> list[Probe]:
    return (([GpuProbe()] if cfg.gpu else []) + ([KmsgXids(cfg.kernel_log)] if cfg.kernel_log else [])
            + ([ModbusSensors(list(cfg.sensors))] if cfg.sensors else []))


class HealthMonitor:
    def __init__(self, cfg: HealthConfig, clock: Clock, record: Any, on_change: Callable[[], None],
                 probes: list[Probe] | None = None,
                 restart_server: Callable[[str], Awaitable[None]] | None = None,
                 gate: DrainGate | None = None):
        self.cfg, self.clock, self.record, self.on_change = cfg, clock, record, on_change
        self.gate = gate
        self.probes = default_probes(cfg) if probes is None else probes
        self.policy = HealthPolicy(cfg.rules, FacilityPolicy(cfg.facility) if cfg.facility else None,
                                   lambda name, limit: ThermalTrend(name, gpu_rules(limit, cfg.lead.drain_time,
                                                                                    cfg.lead.margin)))
        self.restart_server = restart_server
        self.verdict = Verdict()
        self.judged = Verdict()  # the policy's, before the drain budget
        self.fingerprint: dict[str, Any] = {}
        self.readings: dict[str, Reading] = {}
        self._task: asyncio.Task | None = None
        self._failing = ""
        self._alarms: dict[str, str] = {}  # the alarming source ("inlet", "GPU 0") -> its text
        self.place: PlaceKeeper | None = None

    async def start(self) -> None:
        await self.round()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def claim_places(self, places: DrainPlaces, lease: Callable[[], int | None]) -> None:
        """Claim the drain budget's places in etcd, bound to `lease()` (the session's, None while there
        is none)."""
        if self.gate:
            self.place = PlaceKeeper(places, self.gate, lease, self.clock, self.record, self._gated)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.place:
            await self.place.stop()
        for p in self.probes:
            close = getattr(p, "close", None)
            if close:
                close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval)
            await self.round()

    async def round(self) -> None:
        now = self.clock.now()
        try:
            readings = await asyncio.to_thread(lambda: [p.read(now) for p in self.probes])
            if not self.fingerprint:
                gpu = next((r for r in readings if r.source == "gpu"),
                           Reading("gpu", now, False, problem="no GPU: the GPU probe is off (health.gpu)"))
                fp = await asyncio.to_thread(node_fingerprint, gpu)
                self.fingerprint = {**fp, **self.cfg.declare,
                                    **({"declared": sorted(self.cfg.declare)} if self.cfg.declare else {})}
            verdict = self.policy.judge(readings, now, incompatible(mismatches(self.fingerprint,
                                                                               self.cfg.requires)))
        except Exception as e:  # noqa: BLE001 - a probe bug must not end monitoring
            if str(e) != self._failing:
                self._failing = str(e)
                log.exception("health round failed")
                self.record("health_round_failed", f"the health probes failed ({type(e).__name__}: {e}); "
                            f"the last verdict ({self.verdict.state}) stays")
            return
        self._failing = ""
        self.readings = {r.source: r for r in readings}
        await self._apply(verdict)

    async def _apply(self, verdict: Verdict) -> None:
        for action in verdict.actions:
            self.record("health_action", action, action=action.split(":", 1)[0])
            if action.startswith(RESTART_SERVER) and self.restart_server:
                await self.restart_server(action)
        self._report_alarms(verdict.alarms)
        self.judged = verdict
        self._gated()

    def see_members(self, records: Any) -> None:
        """The member records (name -> MemberRecord) of the snapshot just read:
        the drain budget is judged again on them."""
        if self.gate:
            self.gate.see(records, self.clock.now())
            self._gated()

    def _gated(self) -> None:
        """Adopt the judged verdict through the drain budget, and keep the place in etcd in step."""
        if self.gate is None:
            self._adopt(self.judged)
            return
        self._adopt(self.gate.apply(self.judged, self.clock.now(), self.clock.wall()))
        if self.place:
            self.place.tend()

    def _adopt(self, verdict: Verdict) -> None:
        previous = self.verdict
        if (verdict.state, verdict.reasons) == (previous.state, previous.reasons):
            return
        self.verdict = verdict
        # A reason's text moves with its reading ("84 °C", "for 12 s"): the record follows
        # it, the event log only a change of verdict or of what the reasons are about.
        if (verdict.state, _sources(verdict.reasons)) != (previous.state, _sources(previous.reasons)):
            self.record("health_verdict", f"{verdict.state}" + (f": {'; '.join(verdict.reasons)}"
                                                                 if verdict.reasons else ""),
                        verdict=verdict.state, previous=previous.state, reasons=list(verdict.reasons))
        self.on_change()

    def _report_alarms(self, alarms: tuple[str, ...]) -> None:
        """One event when a source starts alarming and one when it stops, not one per
        round (a faulty sensor's text changes with every reading)."""
        now = {_source(a): a for a in alarms}
        for source in sorted(now.keys() - self._alarms.keys()):
            self.record("health_alarm", now[source], source=source)
        for source in sorted(self._alarms.keys() - now.keys()):
            self.record("health_alarm_cleared", f"{source}: no longer alarming", source=source)
        self._alarms = now

    def describe(self) -> dict[str, Any]:
        """For the member record and /status: the verdict, and what each probe sees."""
        return {**self.verdict.to_json(), "requires": self.cfg.requires,
                "probes": {name: (r.problem or "ok") if r.available else f"unavailable: {r.problem}"
                           for name, r in sorted(self.readings.items())}}


def _source(text: str) -> str:
    """What a reason or an alarm is about: its text before the first colon."""
    return text.split(":", 1)[0]


def _sources(reasons: tuple[str, ...]) -> list[str]:
    return sorted(_source(r) for r in reasons)

