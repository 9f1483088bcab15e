"""FacilityPolicy (vigil.core.facility) judges whatever a sensors reading holds:
a point that is not a valid number is an alarm (READY: a faulty sensor never
moves work), never an exception that ends the probe round."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from vigil.core.facility import FAULT_CODE, INLET_TEMP, FacilityPolicy, PointRules
from vigil.core.health import READY

RULES = {"inlet": PointRules(INLET_TEMP), "psu": PointRules(FAULT_CODE, codes={0x88: ("draining", "power imbalance")})}
ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                   lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                   max_leaves=8)


def test_a_valid_point_whose_value_is_no_number_is_an_alarm():
    policy = FacilityPolicy(RULES)
    found = policy.judge({"points": {"inlet": {"valid": True, "value": "warm"},
                                     "psu": {"valid": True, "value": None}}}, 1.0)
    assert [f.verdict for f in found] == [READY, READY] and all("not a number" in f.reason for f in found), found


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["inlet", "psu", "other"]), ANY | st.fixed_dictionaries(
    {"valid": st.booleans(), "value": ANY}), max_size=3))
def test_any_reading_is_judged_without_raising(points):
    for f in FacilityPolicy(RULES).judge({"points": points}, 1.0):
        assert f.verdict in ("ready", "degraded", "draining", "failed")


@settings(max_examples=100, deadline=None)
@given(ANY)
def test_any_reading_at_all_is_judged_without_raising(values):
    assert {f.verdict for f in FacilityPolicy(RULES).judge(values, 1.0)} == {READY}, "nothing valid: alarms only"
