"""Leadership at its self-demotion deadline (vigil.agent.leadership): the
heartbeat thread's part (the fencing-token file goes at the deadline, the
loop then records the ending, once) and a renewal that comes after the
deadline, which ends the role instead of reviving it."""

from __future__ import annotations

import asyncio
import threading

from vigil.agent.history import LeadershipHistory
from vigil.agent.leadership import Leadership
from vigil.agent.vips import VipHolder
from vigil.agent.watchdog import Watchdog
from vigil.testing.clock import FakeClock
from vigil.testing.wait import wait_until


def make(tmp_path, clock: FakeClock, kinds: list[str]) -> Leadership:
    return Leadership("n1", 2.0, clock, tmp_path, LeadershipHistory(tmp_path / "history.jsonl", "n1"),
                      Watchdog("off", None, None), VipHolder((), clock.now, lambda *a, **k: None),
                      lambda kind, cause, **details: kinds.append(kind))


async def test_at_the_deadline_the_thread_removes_the_token_file_and_the_loop_records_the_end_once(tmp_path):
    clock, kinds = FakeClock(), []
    lead = make(tmp_path, clock, kinds)
    guard = asyncio.get_running_loop().create_task(lead.guard())
    await wait_until(lambda: lead._loop is not None, 5, "the guard to run (it learns its loop)")
    assert lead.acquire(7, clock.now())
    assert lead.deadline() == clock.now() + 2.0 and lead.token_file.read_text() == "7\n"
    clock.advance(1.0)
    worker = threading.Thread(target=lead.expire_on_thread)  # before the deadline: nothing
    worker.start()
    worker.join()
    assert lead.token_file.exists() and lead.state == "leader"
    clock.advance(1.5)  # past it; the loop has not looked yet
    for _ in range(3):  # the thread wakes more than once before the loop runs
        worker = threading.Thread(target=lead.expire_on_thread)
        worker.start()
        worker.join()
    assert not lead.token_file.exists() and lead.deadline() is None, "acted on once, at once"
    await wait_until(lambda: lead.state != "leader", 5, "the loop to record the demotion")
    assert kinds.count("leader_demoted") == 1
    guard.cancel()


def test_a_renewal_acknowledged_after_the_deadline_ends_the_role_instead_of_reviving_it(tmp_path):
    clock, kinds = FakeClock(), []
    lead = make(tmp_path, clock, kinds)
    assert lead.acquire(7, clock.now())
    sent = clock.now() + 1.0  # a keep-alive sent in time ...
    clock.advance(2.5)  # ... acknowledged after the deadline (a starved loop)
    lead.renewed(sent)
    assert lead.state != "leader" and kinds == ["leader_elected", "leader_demoted"]
    assert not lead.token_file.exists()
