"""Review B-L11: under etcd auth, etcd 3.5+ allows a raft leader transfer only
to root, so a node's own user is refused every time. RaftLeaderApart says so
once (an event naming the fix) and stops, instead of failing every round.
(etcd 3.4.23, installed here, allows the transfer to any user, so the refusal
is played by a store that answers as 3.5 does.)"""

from __future__ import annotations

import asyncio

from vigil.errors import StoreError
from vigil.store.raft_leader import RaftLeaderApart
from vigil.testing.wait import wait_until


class RefusingStore:
    """etcd as a node's user sees it: status and members readable, the transfer refused."""

    def __init__(self, refusal: str):
        self.refusal, self.transfers = refusal, 0

    async def raft_status(self):
        return "1", {"1": ["https://e1"], "2": ["https://e2"]}, {"1": "etcd1", "2": "etcd2"}

    async def call_member(self, url, path, body):
        self.transfers += 1
        raise StoreError(f"etcd {url} refused {path}: {self.refusal}")


async def test_a_refused_transfer_is_one_event_and_the_end_of_trying():
    store = RefusingStore("etcd https://e1 refused the request: etcdserver: permission denied")
    apart = RaftLeaderApart(store, "etcd1")
    events = []
    apart.wake.set()
    run = asyncio.ensure_future(apart.run(lambda: True, lambda kind, cause, **_: events.append((kind, cause))))
    await asyncio.wait_for(run, 30)  # before: it retried every 2 s for as long as the node led
    assert store.transfers == 1
    assert [k for k, _ in events] == ["etcd_leader_apart_failed"]
    assert "allow it only to root" in events[0][1] and "remove etcd.local_member" in events[0][1]


async def test_an_etcd_that_is_only_busy_is_tried_again():
    store = RefusingStore("etcdserver: leader changed")
    apart = RaftLeaderApart(store, "etcd1")
    run = asyncio.ensure_future(apart.run(lambda: True, lambda *a, **k: None))
    try:
        for n in (1, 2):  # each wake is one more round
            apart.wake.set()
            await wait_until(lambda: store.transfers >= n, 30, f"round {n}")
            assert not run.done()
    finally:
        run.cancel()
