from vigil.core.readiness import Backoff, ReadinessTracker


def test_rise_and_fall():
    r = ReadinessTracker(rise=1, fall=2)
    assert not r.ready and r.canary(False, 0.0, "connection refused") is None
    assert r.reason == "connection refused"
    ch = r.canary(True, 1.0, "ok in 12 ms")
    assert ch.ready and r.ready
    assert r.canary(False, 2.0, "timeout after 2 s") is None, "one failed canary is not enough"
    assert r.canary(True, 3.0, "ok") is None
    r.canary(False, 4.0, "timeout")
    ch = r.canary(False, 5.0, "timeout after 2 s")
    assert not ch.ready and "2 canaries failed in a row; last: timeout after 2 s" == ch.cause


def test_down_is_immediate():
    r = ReadinessTracker()
    r.canary(True, 0.0, "ok")
    ch = r.down(1.0, "server exited with status -9")
    assert not ch.ready and r.reason == "server exited with status -9"
    assert r.down(2.0, "again") is None


def test_backoff_doubles_caps_and_resets():
    b = Backoff(base=0.5, cap=4, reset_after=60)
    b.started(0.0)
    assert [b.next_delay(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4, 4]
    b.started(100.0)
    assert b.next_delay(200.0) == 0.5, "a server that stayed up long restarts at once again"
