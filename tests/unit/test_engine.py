"""Busy is not hung: the engine verdict from progress (vigil.core.engine)."""

from vigil.core.engine import EngineJudge, LoadReading as L


def ready_judge(**kw) -> EngineJudge:
    j = EngineJudge(**{"stall_window": 5.0, "silence_window": 0.5, **kw})
    j.load(0.0, L(0, 0))
    j.canary_sent()
    ch = j.canary(0.1, True, "ok in 12 ms")
    assert ch.ready and ch.verdict == "ready"
    return j


def test_starting_until_a_canary_proves_work():
    j = EngineJudge()
    assert j.load(0.0, L(0, 0)) is None and not j.ready and j.verdict == "starting"
    j.canary_sent()
    assert j.canary(0.5, False, "connection refused") is None and j.reason == "connection refused"
    assert j.canary(1.0, True, "ok").ready


def test_busy_engine_with_advancing_completions_stays_ready_for_ever():
    j = ready_judge()
    ch = j.load(1.0, L(40, 0))
    assert ch.verdict == "busy" and ch.ready
    for i in range(1, 200):  # 200 s of a deep queue, one completion every second
        assert j.load(1.0 + i, L(40, i)) is None
        assert j.ready and j.verdict == "busy" and j.pending == 40
    assert j.load(300.0, L(0, 500)).verdict == "ready"


def test_pending_work_with_no_completion_for_the_stall_window_is_hung():
    j = ready_judge()
    j.load(1.0, L(3, 7))
    assert j.load(5.9, L(3, 7)) is None and j.ready, "4.9 s without a completion: still busy"
    ch = j.load(6.1, L(3, 7))
    assert ch.verdict == "hung" and not ch.ready
    assert "3 pending and nothing completed for 5.1 s" in ch.cause


def test_a_silent_load_probe_is_hung_after_the_silence_window():
    j = ready_judge()
    j.load(1.0, L(5, 1))
    assert j.silent(1.3, "no answer within 0.5 s") is None and j.ready
    ch = j.silent(1.6, "no answer within 0.5 s")
    assert ch.verdict == "hung" and "load probe unanswered for 0.60 s" in ch.cause
    assert j.tick(2.0) is None, "no second change for the same verdict"


def test_frozen_process_is_hung_at_once_and_a_refused_port_is_dead():
    j = ready_judge()
    ch = j.stopped(1.0, "engine process 42 is stopped (state T)")
    assert ch.verdict == "hung" and not ch.ready
    j2 = ready_judge()
    assert j2.refused(1.0, "ConnectionRefusedError").verdict == "dead"


def test_recovers_when_completions_advance_again():
    j = ready_judge()
    j.load(1.0, L(3, 7))
    j.stopped(1.1, "stopped")
    assert j.load(3.0, L(3, 7)) is None and not j.ready, "answering is not progress"
    ch = j.load(3.2, L(2, 8))
    assert ch.ready and ch.verdict == "busy"


def test_canary_failing_on_an_idle_engine_falls_after_fall():
    j = ready_judge(fall=2)
    for t in (1.0, 2.0):
        j.load(t, L(0, 1))
        j.canary_sent()
    assert j.canary(2.5, False, "timed out") is None, "one failed canary is not enough"
    ch = j.canary(3.5, False, "canary answered HTTP 503")
    assert ch.verdict == "failing" and "2 canaries failed in a row" in ch.cause


def test_a_canary_that_timed_out_behind_other_work_is_not_a_failure():
    j = ready_judge(fall=1)
    j.load(1.0, L(0, 5))
    j.canary_sent()
    j.load(1.5, L(30, 9))  # a burst arrived behind the canary; work completes
    assert j.canary(3.0, False, "canary timed out after 1 s") is None
    assert j.ready and j.verdict == "busy"


def test_down_forgets_the_counter_and_a_restarted_engine_counts_from_zero():
    j = ready_judge()
    j.load(1.0, L(2, 900))
    assert j.down(2.0, "inference server exited with status -9").verdict == "dead"
    assert j.load(5.0, L(0, 0)) is None and not j.ready
    j.canary_sent()
    assert j.canary(5.5, True, "ok").ready
