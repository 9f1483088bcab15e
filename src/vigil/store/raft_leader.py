"""Keep etcd's raft leader off the Vigil leader's machine.

When etcd runs on the Vigil nodes themselves (a small cluster's layout), the
death of the machine that holds both leaderships costs two elections in a
row: etcd's (its election timeout, 1 s by default) before any write can
commit, then Vigil's, which needs those writes (the fence marker, the lease
revoke, the new leader key). Measured here with fencing and a 500 ms etcd
election timeout: p50 435 ms, p99 1.33 s from a holder's death to answers
again, against 324 / 387 ms with etcd apart. So while this node leads it
asks etcd to move raft leadership to another member (etcd's MoveLeader, the
`etcdctl move-leader` call; a transfer takes about one raft heartbeat, during
which proposals wait rather than fail).

Contract: `check()` is one round (status, member list, and a transfer only
when the raft leader is `etcd.local_member`); it returns what it did, or
raises StoreError when etcd did not answer. A member name that etcd does not
list is reported, never guessed at. Under etcd auth, etcd 3.5 and later
allow the transfer only to root (3.4 to any user): a node's own user is then
refused, and `run()` says so once and stops, instead of failing every round.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable

from vigil.clock import woken
from vigil.errors import StoreError
from vigil.store.etcd import EtcdStore

log = logging.getLogger(__name__)
CHECK_EVERY = 2.0  # s while leading; at once when leadership begins
DENIED = "permission denied"  # etcd's words for a request the user's roles do not allow


@dataclass(frozen=True)
class RaftCheck:
    moved_to: str | None = None  # the member now asked to lead raft
    problem: str | None = None  # why nothing could be done (config, a one-member cluster)


class RaftLeaderApart:
    def __init__(self, store: EtcdStore, local_member: str):
        self.store, self.local_member = store, local_member
        self.wake = asyncio.Event()  # set when this node's leadership changes

    async def run(self, leading: Callable[[], bool], record: Callable[..., Any]) -> None:
        """While `leading()`, check every CHECK_EVERY s (and at once on `wake`);
        each move is an `etcd_leader_moved` event, each new problem one
        `etcd_leader_apart_failed` event. Returns when etcd refuses the user
        permission (after that event)."""
        said = None
        while True:
            await woken(self.wake, CHECK_EVERY)
            self.wake.clear()
            if not leading():
                continue
            try:
                done = await self.check()
            except StoreError as e:
                if DENIED in str(e):  # a permission does not come back by itself: say it once, stop
                    why = (f"etcd refused this node's etcd user a raft leader transfer ({e}): etcd 3.5 "
                           "and later allow it only to root. etcd's raft leader is no longer kept off this "
                           "machine; remove etcd.local_member, or run etcd apart from the Vigil nodes")
                    log.warning("%s", why)
                    record("etcd_leader_apart_failed", why)
                    return
                log.debug("raft leader check failed: %s", e)  # etcd busy or away: the next round tries again
                continue
            if done.moved_to:
                record("etcd_leader_moved", f"etcd's raft leader was {self.local_member}, on this node (the "
                       f"Vigil leader's): moved to {done.moved_to}, so one machine's death does not cost "
                       "an etcd election before the takeover", member=done.moved_to)
            if done.problem and done.problem != said:
                record("etcd_leader_apart_failed", done.problem)
            said = done.problem

    async def check(self) -> RaftCheck:
        leader, urls, names = await self.store.raft_status()
        mine = next((i for i, n in names.items() if n == self.local_member), None)
        if mine is None:
            return RaftCheck(problem=f"etcd.local_member {self.local_member!r} is not a member of the etcd "
                                     f"cluster (members: {', '.join(sorted(names.values()))}); fix the "
                                     "name or remove the setting")
        if leader != mine:
            return RaftCheck()
        others = sorted((names[i], i) for i in names if i != mine and urls.get(i))
        if not others or not urls.get(mine):
            return RaftCheck(problem="no other etcd member to lead raft: a one-member etcd dies with "
                                     "its machine whatever leads it")
        name, target = others[0]
        await self.store.call_member(urls[mine][0], "maintenance/transfer-leadership", {"targetID": target})
        return RaftCheck(moved_to=name)
