from vigil.core.readiness import Backoff


def test_backoff_doubles_caps_and_resets():
    b = Backoff(base=0.5, cap=4, reset_after=60)
    b.started(0.0)
    assert [b.next_delay(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 4, 4]
    b.started(100.0)
    assert b.next_delay(200.0) == 0.5, "a server that stayed up long restarts at once again"
