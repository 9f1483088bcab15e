"""ExpiryWatch (vigil.core.lease_expiry) against a model of etcd's lessor: the
time left truncated to whole seconds (Go's `int64(Remaining().Seconds())`),
renewals that reset it to the granted TTL until it has expired, a lease scan
every 0.5 s that revokes expired leases (then -1), each reading answered by
etcd at some moment between its sending and its answer, and a watcher's loop
that is sometimes late, sometimes stalled for seconds.

Safety: a Revoke comes only from a reading etcd answered after the lease had
expired (so no renewal can follow: etcd's Renew of an expired lease waits
for its revocation). Timeliness: without stalls (of the loop, or of
a reading in flight), the watcher revokes (or sees the scan's -1) within POLL
+ MARGIN, the loop's lateness and the readings' delays of the expiry, and it
leaves a lease only once it was renewed while watched."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st
from pytest import approx

from vigil.core.lease_expiry import MARGIN, MAX_TTL, POLL, ExpiryWatch, Leave, Poll, Revoke, lease_seconds

SCAN = 0.5  # etcd's lessor revokes expired leases every 500 ms
DELAY = 0.005  # at most between a reading's sending, etcd's answering and its arrival
LATE = 0.05  # a loop this late is busy, not stalled: the timing holds to within it


class Lessor:
    def __init__(self, granted: int, phase: float):
        self.granted, self.phase = granted, phase
        self.expiry = float(granted)  # granted at 0
        self.renewals: list[float] = []

    def renew(self, t: float) -> None:
        if t < self.expiry:  # an expired lease cannot be renewed
            self.expiry = t + self.granted
            self.renewals.append(t)

    def renewed_after(self, t: float) -> bool:
        return any(r >= t for r in self.renewals)

    def revoked_by_scan(self, t: float) -> bool:
        first_scan = self.phase + SCAN * max(0, -(-(self.expiry - self.phase) // SCAN))
        return t >= first_scan

    def read(self, t: float) -> tuple[int, int]:
        if self.revoked_by_scan(t):
            return -1, 0
        return int(self.expiry - t), self.granted  # int() truncates toward zero, as Go's conversion


@st.composite
def scenarios(draw):
    granted = draw(st.integers(1, 5))
    renewals = sorted(draw(st.lists(st.floats(0, 8), max_size=30)))
    late = draw(st.lists(st.one_of(st.floats(0, 0.004), st.floats(0, LATE), st.floats(0.5, 4)), min_size=1,
                         max_size=60))
    delay = st.one_of(st.floats(0, DELAY / 2), st.floats(0.5, 2))  # sometimes a reading stalls in flight
    delays = draw(st.lists(st.tuples(delay, delay), min_size=1, max_size=60))
    return granted, renewals, late, delays, draw(st.floats(0, SCAN)), draw(st.floats(0, 6))


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_a_revoke_comes_only_after_etcd_expired_the_lease_and_soon_after(case):
    granted, renewals, late, delays, phase, start = case
    lessor = Lessor(granted, phase)
    watch = ExpiryWatch()
    t, stalled, pending = start, False, list(renewals)
    for i in range(2000):
        while pending and pending[0] <= t:
            lessor.renew(pending.pop(0))
        d_in, d_out = delays[i % len(delays)]
        etcd_answers_at = t + d_in
        while pending and pending[0] <= etcd_answers_at:
            lessor.renew(pending.pop(0))
        left, got = lessor.read(etcd_answers_at)
        step = watch.read(t, etcd_answers_at + d_out, left, got)
        stalled |= d_in + d_out > DELAY
        if isinstance(step, Revoke):
            assert lessor.expiry <= etcd_answers_at, "revoked a lease etcd had not expired"
            if not stalled:
                assert etcd_answers_at <= lessor.expiry + POLL + MARGIN + 2 * LATE + 3 * DELAY, "revoked late"
            return
        if isinstance(step, Leave):
            assert step.gone == (left < 0)
            if not (step.gone or stalled or granted <= 1):
                assert lessor.renewed_after(start), "left a lease that was not renewed"
            return
        assert isinstance(step, Poll) and step.at > t
        lag = late[i % len(late)]
        t = step.at + lag
        stalled |= lag > LATE
    raise AssertionError("the watch never ended")


def test_a_reading_of_zero_after_a_stall_starts_the_timing_again():
    """A renewal during a long gap between readings could hide behind a 0: the
    gap restarts the second, so the revoke waits for a fresh proof."""
    w = ExpiryWatch()
    assert w.read(0.0, 0.001, 0, 2) == Poll(approx(0.021))
    assert w.read(1.5, 1.501, 0, 2) == Poll(approx(1.521))  # 1.5 s without a reading: may have been renewed
    assert w.first == 1.501
    step, t = w.read(1.521, 1.522, 0, 2), 1.521
    while isinstance(step, Poll):
        t = step.at
        step = w.read(t, t + 0.001, 0, 2)
    assert isinstance(step, Revoke) and t == approx(1.501 + 1 + MARGIN)


def test_a_renewal_seen_in_the_last_second_starts_the_timing_again():
    w = ExpiryWatch()
    w.read(0.0, 0.001, 0, 2)
    assert w.read(0.4, 0.401, 1, 2) == Poll(approx(0.421)) and w.first is None
    assert w.read(0.421, 0.422, 0, 2) == Poll(approx(0.442)) and w.first == 0.422


def test_a_one_second_lease_and_a_missing_one_are_left_to_etcd():
    assert ExpiryWatch().read(0, 0.001, 0, 1) == Leave(gone=False)
    assert ExpiryWatch().read(0, 0.001, -1, 0) == Leave(gone=True)


def test_a_lease_with_seconds_left_is_read_again_a_second_before_its_last():
    assert ExpiryWatch().read(10.0, 10.001, 3, 5) == Poll(approx(10.0 + 3 - 1 - POLL))


def test_a_lease_that_outlives_its_ttl_while_watched_is_left_as_renewed():
    """An owner suspected across a split that still reaches etcd: its lease reads 1
    for longer than its TTL, so it was renewed; the watch ends instead of reading
    it every POLL for as long as the suspicion lasts."""
    w, t = ExpiryWatch(), 0.0
    while isinstance(step := w.read(t, t + 0.001, 1, 2), Poll):
        t = step.at
    assert step == Leave(gone=False) and 2.0 < t <= 2.0 + 2 * POLL


def test_lease_seconds_takes_only_etcds_whole_seconds():
    assert [lease_seconds(v) for v in ("5", 5, "-1", "0", 0)] == [5, 5, -1, 0, 0]
    for bad in (None, True, 1.5, "1.5", "inf", "x", "-2", [], {}, "9" * 40, float("inf"), 10 ** 12):
        assert lease_seconds(bad) is None, bad


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
                    max_leaves=10))
def test_lease_seconds_never_raises(value):
    n = lease_seconds(value)
    assert n is None or -1 <= n <= MAX_TTL
