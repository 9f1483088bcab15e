"""The drain budget with real agents (vigil/testing/sim_cluster.py): an XID storm
reaches every node of nine, in three racks of three, within one health
round. Each agent decides from the member records it reads, and the
cluster drains at most a third (one per rack); the rest keep serving,
degraded, say why in their records, and one of them leads."""

from __future__ import annotations

import asyncio
import json

from vigil.testing.sim_cluster import SimCluster
from vigil.store.keys import Keys
from vigil.store.records import parse_member_kv
from vigil.testing.xid_log import XidLog


class StormCluster(SimCluster):
    """Every agent starts with the storm in its kernel log, its first health
    round a random fraction of a second apart (a storm spreads; the rounds
    are 1 s apart); `seen` keeps the member records and the leader at the end."""

    async def _drive(self, seconds: float, quiet: float) -> None:
        self.store.start()
        for name in self.nodes:
            self.start(name)
            self.nodes[name].agent.health.probes = [XidLog()]
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))
        await asyncio.sleep(seconds)
        keys = Keys("sim")
        self.seen = {n: parse_member_kv(keys.member(n), self.store.peek(keys.member(n)).value) for n in self.nodes}
        leader = self.store.peek(keys.leader)
        self.leader = leader.value if leader else None


def test_an_xid_storm_on_every_node_drains_a_third_and_one_of_the_rest_leads(sim_dir):
    sim = StormCluster(7, sim_dir, nodes=9, rack_size=3)
    r = sim.run(90.0, quiet=0.0)
    verdicts = {n: rec.verdict for n, rec in sim.seen.items()}
    draining = sorted(n for n, v in verdicts.items() if v == "draining")
    racks = {n: sim.nodes[n].cfg.failure_domain for n in sim.nodes}
    assert 1 <= len(draining) <= 3, verdicts
    assert all(sum(racks[d] == rack for d in draining) <= 1 for rack in set(racks.values())), (draining, racks)
    rest = [n for n in sim.nodes if n not in draining]
    assert all(verdicts[n] == "degraded" and sim.seen[n].drain_deferred for n in rest), json.dumps(
        {n: sim.seen[n].health for n in rest})
    assert all(sim.seen[n].reasons[0].startswith("drain deferred by the drain budget") for n in rest)
    assert sim.leader in rest, ("a degraded node leads rather than none", sim.leader, verdicts)
    assert r.overlaps == []
