from dataclasses import replace

import pytest

from vigil.core.timing import Timing, validate_timing


def fields_of(t):
    return [p.field for p in validate_timing(t)]


def test_defaults_are_consistent():
    assert validate_timing(Timing()) == []


def test_lab_timing_is_consistent():
    t = Timing(lease_ttl=2, keepalive_interval=0.5, demote_after=1.6, etcd_timeout=0.5,
               loop_interval=0.5)
    assert validate_timing(t) == []


@pytest.mark.parametrize("change, field", [
    (dict(heartbeat_interval=0.2), "timing.heartbeat_interval"),
    (dict(keepalive_interval=4.0), "timing.keepalive_interval"),
    (dict(demote_after=10.0), "timing.demote_after"),
    (dict(demote_after=3.0), "timing.demote_after"),
    (dict(lease_ttl=0), "timing.lease_ttl"),
    (dict(lease_ttl=2.5), "timing.lease_ttl"),
    (dict(heartbeat_interval=-1), "timing.heartbeat_interval"),
    (dict(rise=0), "timing.rise"),
])
def test_each_relation_is_enforced(change, field):
    problems = validate_timing(replace(Timing(), **change))
    assert field in [p.field for p in problems]
    assert all(p.fix for p in problems)


def test_problem_names_the_bound():
    [p] = validate_timing(replace(Timing(), keepalive_interval=4.0))
    assert "lease_ttl/3" in p.fix and p.value == 4.0
