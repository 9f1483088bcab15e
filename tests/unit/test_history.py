import subprocess
import sys

from vigil.agent.history import LeadershipHistory, read_jsonl
from vigil.core.history import Interval, intervals, overlaps


def test_interval_of_killed_leader_ends_at_last_valid_until():
    recs = [{"node": "a", "event": "start", "token": 5, "at": 10.0, "valid_until": 11.6},
            {"node": "a", "event": "renew", "token": 5, "at": 10.5, "valid_until": 12.1}]
    [iv] = intervals(recs)
    assert (iv.start, iv.end, iv.ended_by) == (10.0, 12.1, "lease")


def test_end_record_wins_when_earlier():
    recs = [{"node": "a", "event": "start", "token": 5, "at": 10.0, "valid_until": 11.6},
            {"node": "a", "event": "end", "token": 5, "at": 10.2, "kind": "resigned"}]
    [iv] = intervals(recs)
    assert iv.end == 10.2 and iv.ended_by == "resigned"


def test_overlaps_found_only_across_tokens():
    a = Interval("a", 5, 0.0, 2.0, "lease")
    b = Interval("b", 9, 1.9, 3.0, "lease")
    c = Interval("c", 12, 3.0, 4.0, "lease")
    assert overlaps([a, b, c]) == [(a, b)]
    assert overlaps([a, c]) == []


def test_fencing_ends_a_killed_leaders_interval():
    recs = [{"node": "a", "event": "start", "token": 5, "at": 10.0, "valid_until": 11.6},
            {"node": "a", "event": "fenced", "token": 5, "at": 10.4, "by": "b"}]
    [iv] = intervals(recs)
    assert iv.end == 10.4 and iv.ended_by == "fenced"


def test_a_record_is_readable_at_once_and_survives_the_writers_sigkill(tmp_path):
    """Handed to the kernel before write() returns (the fsync follows on a
    thread): a process killed right after the write loses nothing."""
    path = tmp_path / "leadership.jsonl"
    h = LeadershipHistory(path, "a")
    h.write("start", 5, 10.0, valid_until=11.6)
    assert read_jsonl(path)[-1]["token"] == 5
    h.flush()
    code = ("import os, signal, sys; from pathlib import Path; from vigil.agent.history import LeadershipHistory;"
            "LeadershipHistory(Path(sys.argv[1]), 'b').write('start', 9, 12.0);"
            "os.kill(os.getpid(), signal.SIGKILL)")
    subprocess.run([sys.executable, "-c", code, str(path)], timeout=60)
    assert [r["token"] for r in read_jsonl(path)] == [5, 9]
