"""Many nodes on the in-memory store and a FakeClock, with seeded faults:
pauses (SIGSTOP), crashes and restarts, slow and lost keep-alive replies.
Invariant: leadership validity windows with different tokens never overlap,
and tokens strictly increase. Uses the real LeaderRole and store semantics."""

from __future__ import annotations

import random

import pytest

from vigil.agent.history import Interval, overlaps
from vigil.core.leader import LeaderRole
from vigil.errors import LeaseNotFound
from vigil.testing import FakeClock, MemoryStore

TTL, DEMOTE_AFTER, KEY = 2, 1.6, "/vigil/sim/leader"


class SimNode:
    def __init__(self, name: str):
        self.name = name
        self.role = LeaderRole(DEMOTE_AFTER)
        self.lease = 0
        self.last_sent = 0.0
        self.frozen_until = 0.0
        self.started: dict[int, float] = {}
        self.intervals: list[Interval] = []

    def end(self, change) -> None:
        if change:
            self.intervals.append(Interval(self.name, change.token, self.started[change.token],
                                           change.at, change.kind))


async def step(node: SimNode, store: MemoryStore, clock: FakeClock, rng: random.Random) -> None:
    if clock.now() < node.frozen_until:
        return
    node.end(node.role.check(clock.now()))
    if not node.lease:
        node.last_sent = clock.now()
        node.lease = (await store.grant(TTL)).id
    else:
        sent = clock.now()
        clock.advance(rng.uniform(0, 0.3))  # request latency: etcd renews later than we sent
        try:
            await store.keepalive(node.lease)
            if rng.random() > 0.1:  # 10 % of replies are lost: we never learn it was renewed
                node.last_sent = sent
                node.role.renewed(sent)
        except LeaseNotFound:
            node.end(node.role.lost(clock.now(), "lease lost"))
            node.lease = 0
            return
    if not node.role.is_leader(clock.now()):
        created, kv = await store.create(KEY, node.name, node.lease)
        if created:
            change = node.role.acquired(kv.create_revision, node.last_sent, clock.now())
            node.started[change.token] = change.at
        elif kv.lease == node.lease:
            await store.delete_if_created(KEY, kv.create_revision)  # our stale key: release it


@pytest.mark.parametrize("seed", range(40))
async def test_no_two_leaders_under_seeded_faults(seed):
    rng = random.Random(seed)
    clock = FakeClock()
    store = MemoryStore(clock)
    nodes = [SimNode(f"n{i}") for i in range(3)]
    for _ in range(1500):
        clock.advance(rng.uniform(0.01, 0.4))
        store.expire()
        node = rng.choice(nodes)
        fault = rng.random()
        if fault < 0.02:
            node.frozen_until = clock.now() + rng.uniform(0.5, 6.0)  # SIGSTOP / GC pause
        elif fault < 0.03:
            node.end(node.role.lost(clock.now(), "crash"))  # SIGKILL: it acts no more ...
            node.lease, node.frozen_until = 0, clock.now() + rng.uniform(0, 3)  # ... then restarts
        await step(node, store, clock, rng)
    for n in nodes:
        if n.role.state == "leader":
            n.intervals.append(Interval(n.name, n.role.token, n.started[n.role.token],
                                        n.role.valid_until, "end of run"))
    ivs = sorted((i for n in nodes for i in n.intervals), key=lambda i: i.start)
    assert len(ivs) >= 3, "the schedule exercised several leaderships"
    assert overlaps(ivs) == []
    tokens = [i.token for i in ivs]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
