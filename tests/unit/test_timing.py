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


def test_a_big_lab_gets_product_session_timers_and_smaller_racks():
    from vigil.cli.lab_cmd import BIG_LAB, lab_rack_size, lab_timing

    assert lab_timing("auto", BIG_LAB) is None
    assert lab_timing("auto", BIG_LAB + 1) == {"heartbeat_interval": 0.1, "etcd_timeout": 2.0}, \
        "above BIG_LAB agents etcd's answers are awaited 2 s"
    assert lab_timing("product", 3) == {"heartbeat_interval": 0.1} and lab_timing("lab", 100) is None
    assert [lab_rack_size(None, n) for n in (3, BIG_LAB, BIG_LAB + 1, 60)] == [10, 10, 5, 5]
    assert lab_rack_size(7, 60) == 7, "a size given is kept"


def test_fast_detection_is_a_consistent_timing_that_suspects_sooner():
    from vigil.cli.lab_cmd import lab_timing
    from vigil.core.timing import DETECTION_FIELDS, FAST_DETECTION
    from vigil.lab.cluster import LAB_TIMING

    fast = Timing(**LAB_TIMING | FAST_DETECTION)
    assert validate_timing(fast) == []
    assert fast.suspicion_time < 0.14 < Timing().suspicion_time, (fast.suspicion_time, Timing().suspicion_time)
    assert fast.suspicion_time >= 2 * fast.heartbeat_interval, "one late heartbeat must not convict"
    assert lab_timing("auto", 3, "fast") == LAB_TIMING | FAST_DETECTION
    assert lab_timing("product", 3, "fast")["heartbeat_interval"] == 0.05
    assert set(DETECTION_FIELDS) <= {f for f in Timing.__dataclass_fields__}
