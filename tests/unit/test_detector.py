import math

from hypothesis import given, settings, strategies as st

from vigil.core.detector import DetectorSettings, PauseGuard, PhiAccrualDetector, _z_for_phi, _phi_of_z


def steady(det, start=0.0, n=50, interval=0.1):
    t = start
    for _ in range(n):
        det.heartbeat(t)
        t += interval
    return t - interval


def test_phi_is_zero_before_first_heartbeat():
    d = PhiAccrualDetector(DetectorSettings())
    assert d.phi(123.0) == 0.0
    assert d.is_available(123.0)


def test_steady_sender_is_available_and_silence_convicts():
    s = DetectorSettings(threshold=8, min_std=0.02, acceptable_pause=0.04, first_interval=0.1)
    d = PhiAccrualDetector(s)
    last = steady(d)
    assert d.phi(last + 0.1) < 1.0
    assert d.is_available(last + 0.15)
    assert not d.is_available(last + 0.5)


def test_detection_time_matches_threshold_crossing():
    s = DetectorSettings(threshold=8, min_std=0.02, acceptable_pause=0.04, first_interval=0.1)
    d = PhiAccrualDetector(s)
    last = steady(d)
    t_cross = s.detection_time(d.mean())
    assert d.phi(last + t_cross - 0.005) < 8 <= d.phi(last + t_cross + 0.005)
    # 100 ms interval, 40 ms pause, 5.2 sigma of 20 ms: about 245 ms of silence
    assert 0.22 < t_cross < 0.27


def test_irregular_sender_gets_more_slack():
    s = DetectorSettings()
    regular, jittery = PhiAccrualDetector(s), PhiAccrualDetector(s)
    steady(regular)
    t = 0.0
    for i in range(50):
        jittery.heartbeat(t)
        t += 0.05 if i % 2 else 0.15
    assert jittery.std() > regular.std()
    assert jittery.phi(t - 0.1 + 0.3) < regular.phi(4.9 + 0.3)


def test_huge_silence_does_not_overflow():
    d = PhiAccrualDetector(DetectorSettings())
    steady(d)
    assert math.isfinite(d.phi(1e9))
    assert d.phi(1e9) > 1000


def test_forgive_credits_observer_pause_and_skips_sample():
    d = PhiAccrualDetector(DetectorSettings())
    last = steady(d)
    mean = d.mean()
    now = last + 2.0  # observer stalled 1.9 s
    assert not d.is_available(now)
    d.forgive(1.9, now)
    assert d.is_available(now)
    d.heartbeat(now + 0.01)
    assert abs(d.mean() - mean) < 1e-9, "the sample spanning the pause is not recorded"


def test_forgive_never_moves_last_heartbeat_into_future():
    d = PhiAccrualDetector(DetectorSettings())
    last = steady(d)
    d.forgive(10.0, last + 0.5)
    assert d.last_heartbeat == last + 0.5


def test_pause_guard_reports_lateness_beyond_the_promised_look():
    g = PauseGuard(tolerance=0.02)
    assert g.tick(0.0) == 0.0  # nothing promised yet
    g.expect(0.1)
    assert g.tick(0.05) == 0.0 and g.tick(0.115) == 0.0  # early, and late within the tolerance
    late = g.tick(0.6)
    assert abs(late - 0.5) < 1e-9
    assert g.pauses == 1 and abs(g.longest - 0.5) < 1e-9
    assert g.tick(0.61) == 0.0  # the looks queued behind the late one are not late again


@given(st.floats(0.5, 16))
def test_z_for_phi_inverts(phi):
    assert abs(_phi_of_z(_z_for_phi(phi)) - phi) < 1e-6


@given(st.lists(st.floats(0.001, 1.0), min_size=3, max_size=100), st.floats(0, 5), st.floats(0, 5))
def test_phi_grows_with_silence(intervals, a, b):
    d = PhiAccrualDetector(DetectorSettings())
    t = 0.0
    for i in intervals:
        d.heartbeat(t)
        t += i
    lo, hi = sorted((a, b))
    assert d.phi(t + lo) <= d.phi(t + hi) + 1e-9


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0.01, 2.0), min_size=0, max_size=60), st.floats(0.0, 0.5))
def test_suspect_at_is_where_phi_crosses_the_threshold(gaps, pause):
    """The tick loop skips phi before `suspect_at()`: it must never be late."""
    d = PhiAccrualDetector(DetectorSettings())
    t = 0.0
    d.heartbeat(t)
    for g in gaps:
        t += g
        d.heartbeat(t)
    d.forgive(pause, t + pause)
    at = d.suspect_at()
    assert d.phi(at - 0.001) < d.settings.threshold <= d.phi(at + 1e-9)
