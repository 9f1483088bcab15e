"""Every file the product appends to is bounded (issue 22 B12, vigil.logfile):
the gateway's history (tests/integration/test_actuator.py), the leadership
history, the controller's acks (16 MiB, already), and a child's output."""

from __future__ import annotations

import json
import sys

from vigil.agent.child import ChildProcess
from vigil.agent.history import LeadershipHistory, read_jsonl, read_records
from vigil.core.history import intervals
from vigil.clock import SystemClock
from vigil.logfile import BoundedLog, cap
from vigil.testing.wait import wait_until


def test_a_bounded_log_keeps_the_newest_lines_in_two_files(tmp_path):
    path = tmp_path / "x.jsonl"
    log = BoundedLog(path, 1000)
    for i in range(500):
        log.append(f'{{"i": {i:04}}}')  # 12 bytes a line: 6,000 bytes in all
    rotated = tmp_path / "x.jsonl.1"
    assert path.stat().st_size <= 1000 + 12 and rotated.stat().st_size <= 1000 + 12
    lines = (rotated.read_text() + path.read_text()).splitlines()
    assert lines[-1] == '{"i": 0499}' and lines == [f'{{"i": {i:04}}}' for i in range(500 - len(lines), 500)]
    assert log.rotations == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl", "x.jsonl.1"]


def test_the_leadership_history_is_bounded_and_read_across_its_rotation(tmp_path):
    path = tmp_path / "leadership.jsonl"
    h = LeadershipHistory(path, "n1", max_bytes=4096)
    h.write("start", 7, 100.0, valid_until=110.0)
    for i in range(200):  # renewals every keep-alive: ~100 bytes each, past the bound many times
        h.write("renew", 7, 101.0 + i, valid_until=111.0 + i)
    h.flush()
    assert path.stat().st_size <= 4096 + 200 and (tmp_path / "leadership.jsonl.1").exists()
    records = read_records([path])
    assert records[-1]["valid_until"] == 310.0 and len(records) < 201, "bounded: old renewals dropped"
    h.write("start", 9, 400.0, valid_until=410.0)
    h.write("end", 9, 405.0, kind="resigned", reason="test")
    h.flush()
    assert [(i.token, i.start, i.end) for i in intervals(read_records([path]))] == [(9, 400.0, 405.0)]


def test_cap_rotates_a_file_another_process_appends_to(tmp_path):
    path = tmp_path / "child.log"
    with open(path, "ab") as writer:  # O_APPEND, as a child's stdout
        writer.write(b"x" * 3000)
        writer.flush()
        assert cap(path, 1000) and path.stat().st_size == 0
        writer.write(b"after\n")
        writer.flush()
    assert path.read_bytes() == b"after\n", "the writer's next line lands at the new start"
    assert (tmp_path / "child.log.1").read_bytes() == b"x" * 3000
    assert not cap(path, 1000) and not cap(tmp_path / "absent", 1)


async def test_a_chatty_child_does_not_fill_the_disk(tmp_path):
    """The agent's child writes 4 MB; its log stays near the 256 KiB bound."""
    done = tmp_path / "done"
    script = ("import pathlib, sys, time\nfor i in range(4000): sys.stdout.write('y' * 999 + '\\n'); "
              f"sys.stdout.flush()\npathlib.Path({str(done)!r}).touch()\ntime.sleep(600)\n")
    child = ChildProcess("chatty", "a chatty server", [sys.executable, "-c", script], tmp_path, SystemClock(),
                         lambda *a, **k: None, log_max=256 * 1024, log_check=0.1)
    child.start()
    log = tmp_path / "chatty.log"
    try:
        await wait_until(done.exists, 60, "the child to write 4 MB")
        await wait_until(lambda: log.stat().st_size <= 256 * 1024, 30, "the log to be rotated")
        assert (tmp_path / "chatty.log.1").stat().st_size <= 4_000_000
    finally:
        await child.stop()


def test_the_chaos_checker_reads_the_gateways_writes_and_the_acks(tmp_path):
    """read_jsonl (vigil.chaos.checker.load) had come to keep leadership records only,
    so the actuator invariants were checked against no writes at all."""
    write = {"at": 1.7e9, "token": 5, "register": 0, "value": 1, "accepted": True, "reason": "written",
             "readback": 1, "node": "n1"}
    ack = {"node": "n1", "token": 5, "register": 0, "value": 1, "at": 1.7e9}
    path = tmp_path / "writes.jsonl"
    log = BoundedLog(path)
    for rec in (write, ack):
        log.append(json.dumps(rec))
    path.write_text(path.read_text() + '{"cut by SIGKILL')
    assert read_jsonl(path) == [write, ack]
    assert read_records([path]) == [], "leadership readers still take leadership records only"
