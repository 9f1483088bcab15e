from vigil.core.leader import FOLLOWER, LEADER, LeaderRole
from vigil.testing import FakeClock


def test_acquire_sets_deadline_from_lease_send_time():
    clock = FakeClock()
    role = LeaderRole(demote_after=1.6)
    sent = clock.now()
    clock.advance(0.2)
    change = role.acquired(7, sent, clock.now())
    assert change.kind == "acquired" and change.token == 7
    assert role.is_leader(clock.now())
    assert abs(role.valid_until - (sent + 1.6)) < 1e-9


def test_self_demotes_exactly_at_deadline_and_never_reuses_token():
    clock = FakeClock()
    role = LeaderRole(demote_after=1.6)
    role.acquired(7, clock.now(), clock.now())
    clock.advance(1.59)
    assert role.check(clock.now()) is None and role.is_leader(clock.now())
    clock.advance(0.02)
    assert not role.is_leader(clock.now()), "judged with a fresh now, before any tick runs"
    change = role.check(clock.now())
    assert change.kind == "demoted" and change.token == 7
    assert change.at == role.valid_until or role.state == FOLLOWER
    assert "not renewed within 1.6 s" in change.reason
    role.renewed(clock.now())  # a late ack cannot resurrect the old token
    assert not role.is_leader(clock.now())


def test_renewal_extends_deadline_monotonically():
    clock = FakeClock()
    role = LeaderRole(demote_after=1.6)
    role.acquired(3, clock.now(), clock.now())
    clock.advance(1.0)
    role.renewed(clock.now())
    role.renewed(clock.now() - 0.9)  # an older ack arriving late does not shorten it
    clock.advance(1.5)
    assert role.is_leader(clock.now())


def test_paused_process_resumes_as_non_leader():
    clock = FakeClock()
    role = LeaderRole(demote_after=1.6)
    role.acquired(9, clock.now(), clock.now())
    clock.advance(4.0)  # SIGSTOP for 2 x TTL
    assert role.state == LEADER and not role.is_leader(clock.now())
    change = role.check(clock.now())
    assert change.at < clock.now(), "the interval ends at the deadline, not at resume"


def test_resign_and_lost_end_leadership_once():
    clock = FakeClock()
    role = LeaderRole(demote_after=1.6)
    role.acquired(5, clock.now(), clock.now())
    assert role.resigned(clock.now(), "switchover").kind == "resigned"
    assert role.resigned(clock.now(), "again") is None
    assert role.lost(clock.now(), "lease") is None


def test_a_resign_noticed_after_a_pause_past_the_deadline_reports_the_demotion():
    """Whichever task runs first on SIGCONT, the term ended at its deadline."""
    for end in ("resigned", "lost"):
        clock = FakeClock()
        role = LeaderRole(demote_after=1.6)
        start = clock.now()
        role.acquired(7, start, start)
        clock.advance(4.0)
        change = getattr(role, end)(clock.now(), "noticed on resume")
        assert change.kind == "demoted" and abs(change.at - (start + 1.6)) < 1e-9
