"""The health policy as pure code: the XID catalog table, GPU rules, a real
H200 reading, and the thermal trend on a run-up and on noise."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import pytest

from vigil.core.health import (DEGRADED, DRAINING, FAILED, READY, RESET_GPU, RESTART_SERVER, XID_CATALOG,
                               HealthPolicy, HealthRules)
from vigil.core.thermal import ThermalRules, ThermalTrend, inlet_alarm
from vigil.probes.base import Reading

H200 = json.loads((Path(__file__).parents[2] / "bench/results/nvml_fields_h200.json").read_text())["reading"]


def gpu_reading(now=0.0, **changes):
    values = copy.deepcopy(H200)
    values["gpus"][0].update(changes)
    return Reading("gpu", now, True, values)


def xid_reading(now, *xids):
    return Reading("xid", now, True, {"xids": [{"pci": "0000:3b:00", "xid": x, "detail": ""} for x in xids]})


def test_the_recorded_h200_is_ready_and_a_node_without_gpus_too():
    policy = HealthPolicy()
    assert policy.judge([gpu_reading()], 0).state == READY
    v = policy.judge([Reading("gpu", 0, False, problem="no GPU: NVML library not found")], 0)
    assert (v.state, v.reasons) == (READY, ())


@pytest.mark.parametrize("xid,verdict,action", [
    (13, READY, RESTART_SERVER), (31, READY, RESTART_SERVER), (43, READY, RESTART_SERVER),
    (45, READY, RESTART_SERVER), (48, DRAINING, RESET_GPU), (63, DRAINING, RESET_GPU),
    (64, DRAINING, RESET_GPU), (74, DRAINING, RESET_GPU), (79, FAILED, "fence"), (92, DRAINING, RESET_GPU),
    (94, DRAINING, RESET_GPU), (95, DRAINING, RESET_GPU), (119, DRAINING, RESET_GPU),
    (120, DRAINING, RESET_GPU)])
def test_xid_catalog(xid, verdict, action):
    assert XID_CATALOG[xid][:2] == (verdict, action)
    v = HealthPolicy().judge([xid_reading(10, xid)], 10)
    assert v.state == verdict
    assert any(a.startswith(action) and f"XID {xid}" in a for a in v.actions), "the action is asked once"
    if verdict != READY:
        assert f"XID {xid} on GPU 0000:3b:00" in v.reasons[0]


def test_xid_findings_hold_then_expire_and_actions_are_asked_once():
    policy = HealthPolicy(HealthRules(xid_hold=300))
    assert policy.judge([xid_reading(0, 48)], 0).state == DRAINING
    later = policy.judge([], 299)
    assert later.state == DRAINING and later.actions == (), "the reset is asked when the XID arrives only"
    assert policy.judge([], 300).state == READY


def test_unknown_xids_and_overrides_follow_the_rules():
    v = HealthPolicy().judge([xid_reading(0, 999)], 0)
    assert v.state == DEGRADED and "not in the catalog" in v.reasons[0]
    rules = HealthRules(xid={999: FAILED, 13: DRAINING}, unknown_xid=READY)
    assert HealthPolicy(rules).judge([xid_reading(0, 999)], 0).state == FAILED
    assert HealthPolicy(rules).judge([xid_reading(0, 13)], 0).state == DRAINING
    assert HealthPolicy(rules).judge([xid_reading(0, 998)], 0).state == READY


def test_nvml_xid_events_count_like_kernel_log_lines():
    r = gpu_reading()
    r.values["xids"] = [{"xid": 79, "gpu": "GPU-97dc"}]
    v = HealthPolicy().judge([r], 0)
    assert v.state == FAILED and "GPU GPU-97dc" in v.reasons[0]


@pytest.mark.parametrize("changes,verdict,words", [
    ({"lost": True}, FAILED, "is lost"),
    ({"remapped_rows": {"correctable": 0, "uncorrectable": 1, "pending": 1, "failure": 0}}, DRAINING,
     "remapping pending"),
    ({"remapped_rows": {"correctable": 0, "uncorrectable": 9, "pending": 0, "failure": 1}}, DRAINING,
     "remapping failed"),
    ({"retired_pages": {"single_bit": 0, "double_bit": 1, "pending": True}}, DRAINING, "retirement pending"),
    ({"recovery_action": "drain_and_reset"}, DRAINING, "drain_and_reset"),
    ({"recovery_action": "unknown(9)"}, DRAINING, "treated as drain"),
    ({"fabric_state": "in_progress"}, DRAINING, "not ready until completed"),
    ({"ecc_uncorrected_volatile": 3}, DEGRADED, "3 uncorrected ECC"),
    ({"nvlink": [{"link": 0, "active": True}, {"link": 3, "active": False}]}, DEGRADED, "NVLink 3 down"),
    ({"temperature_c": 85, "thermal_margin_c": 4}, DEGRADED, "4 °C below its slowdown threshold 89"),
    ({"temperature_c": 88, "thermal_margin_c": 1}, DRAINING, "drain at <= 2"),
])
def test_gpu_state_rules(changes, verdict, words):
    v = HealthPolicy().judge([gpu_reading(**changes)], 0)
    assert v.state == verdict
    assert any(words in r for r in v.reasons), v.reasons


def test_thermal_slowdown_degrades_then_drains_after_it_lasts():
    policy = HealthPolicy(HealthRules(slowdown_drain_after=60))
    slow = {"clock_events": ["hw_thermal"]}
    assert policy.judge([gpu_reading(0, **slow)], 0).state == DEGRADED
    assert policy.judge([gpu_reading(59, **slow)], 59).state == DEGRADED
    assert policy.judge([gpu_reading(60, **slow)], 60).state == DRAINING
    assert policy.judge([gpu_reading(61)], 61).state == READY, "a slowdown that ends clears"
    assert policy.judge([gpu_reading(62, **slow)], 62).state == DEGRADED, "and counts from zero again"


def test_the_worst_finding_wins_and_every_reason_is_kept():
    v = HealthPolicy().judge([gpu_reading(ecc_uncorrected_volatile=1, lost=False,
                                          recovery_action="gpu_reset"), xid_reading(0, 79)], 0)
    assert v.state == FAILED and len(v.reasons) == 3


# -- thermal inertia ----------------------------------------------------------
def runup(seconds=900, fail_at=120.0, start=24.0, rise=14.0, tau=300.0, noise=0.3, seed=7):
    """A synthetic recording at 1 Hz: a rack inlet at `start` until its cooling
    fails at `fail_at`, then first-order heating toward start + rise (time
    constant tau), with Gaussian sensor noise."""
    rnd = random.Random(seed)
    for t in range(seconds):
        warm = rise * (1 - math.exp(-(t - fail_at) / tau)) if t > fail_at else 0.0
        yield float(t), start + warm + rnd.gauss(0, noise)


def first_drain(samples, rules):
    trend = ThermalTrend("inlet", rules)
    for t, temp in samples:
        trend.add(t, temp)
        if trend.judge():
            return t
    return None


def test_a_run_up_drains_before_the_limit_with_the_lead_it_needs():
    rules = ThermalRules(limit_c=32.0, drain_time=30, margin=30)
    crossing = next(t for t, temp in runup(noise=0) if temp >= 32.0)
    drained = first_drain(runup(), rules)
    assert drained is not None and drained <= crossing - rules.drain_time, (drained, crossing)


@pytest.mark.parametrize("seed", range(5))
def test_a_noisy_flat_signal_never_drains(seed):
    rnd = random.Random(seed)
    flat = ((float(t), 27.0 + rnd.gauss(0, 0.8)) for t in range(3600))
    assert first_drain(flat, ThermalRules(limit_c=32.0)) is None


def test_spikes_do_not_drain_and_a_drain_clears_with_hysteresis():
    spiky = ((float(t), 26.0 + (4.0 if t % 97 == 0 else 0.0)) for t in range(1800))
    assert first_drain(spiky, ThermalRules()) is None
    trend = ThermalTrend("inlet", ThermalRules(limit_c=32.0))
    for t in range(60):
        trend.add(float(t), 25.0 + 0.1 * t)  # 6 °C/min toward 32
        trend.judge()
    assert trend.draining
    for t in range(60, 240):  # cooling restored: it falls back
        trend.add(float(t), max(26.0, 31.0 - 0.05 * (t - 60)))
        trend.judge()
    assert not trend.draining


def test_inlet_envelope():
    assert inlet_alarm("rack 3", 24.0) == ""
    assert "recommended 18-27" in inlet_alarm("rack 3", 29.0)
    assert "allowable 15-32" in inlet_alarm("rack 3", 33.5)
    assert "allowable 15-32" in inlet_alarm("rack 3", 14.0)


def gpu_policy():
    from vigil.core.thermal import gpu_rules
    return HealthPolicy(gpu_trend=lambda name, limit: ThermalTrend(name, gpu_rules(limit, 30, 30)))


def gpu_run(policy, samples):
    """Feed (second, °C, W) to the policy as GPU 0 readings (slowdown 89 °C); the
    first second at which it drains, or None."""
    for t, temp, watts in samples:
        v = policy.judge([gpu_reading(t, temperature_c=round(temp), thermal_margin_c=89 - round(temp),
                                      power_w=watts)], t)
        if v.state == DRAINING:
            return t
    return None


@pytest.mark.parametrize("tau,seed", [(tau, seed) for tau in (20, 40, 60, 90, 120, 200) for seed in range(3)])
def test_a_gpu_warming_up_to_its_working_temperature_never_drains(tau, seed):
    """Idle at 35 °C and 80 W, then a job at 600 W (+- 5 %): an exponential approach
    to 82 °C (time constant tau)."""
    rnd = random.Random(seed)
    samples = ((float(t), (35 if t < 30 else 35 + 47 * (1 - math.exp(-(t - 30) / tau))) + rnd.gauss(0, 0.5),
                80.0 if t < 30 else 600 * (1 + rnd.uniform(-0.05, 0.05))) for t in range(900))
    assert gpu_run(gpu_policy(), samples) is None


def test_a_gpu_whose_cooling_failed_drains_before_it_slows_down():
    """At 78 °C under a steady 600 W (+- 5 %), then its fan stops: +0.15 °C/s toward 89 °C."""
    rnd = random.Random(5)
    samples = [(float(t), (78 if t < 120 else 78 + 0.15 * (t - 120)) + rnd.gauss(0, 0.5),
                600 * (1 + rnd.uniform(-0.05, 0.05))) for t in range(400)]
    crossing = 120 + (89 - 78) / 0.15
    drained = gpu_run(gpu_policy(), samples)
    assert drained is not None and drained <= crossing - 30, (drained, crossing)
