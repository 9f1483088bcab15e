"""The real agent, simulated (vigil/testing/sim_cluster.py): three `Agent`s
with their real reconciler, election, session, detector and role guard, on
the in-memory store and heartbeat network, on virtual time, under seeded
SIGKILLs and restarts, SIGSTOPs past the lease TTL, nodes cut from etcd or
from their peers, and slow and lost store replies.

Invariant: leadership windows of different tokens never overlap (from the
agents' own history files) and each new term holds a greater token.

CI runs SEEDS x MINUTES; bench/sim.py runs the long schedule (200 seeds x
60 virtual minutes) and reports its time. VIGIL_SIM_SEEDS and
VIGIL_SIM_MINUTES change the CI schedule.
"""

from __future__ import annotations

import os

import pytest

from vigil.errors import ConfigError
from vigil.testing.sim_cluster import SimCluster

SEEDS = int(os.environ.get("VIGIL_SIM_SEEDS", "10"))
MINUTES = float(os.environ.get("VIGIL_SIM_MINUTES", "60"))


@pytest.mark.parametrize("seed", range(SEEDS))
def test_real_agents_never_overlap_under_seeded_faults(seed, sim_dir):
    r = SimCluster(seed, sim_dir).run(MINUTES * 60)
    assert len(r.faults) >= MINUTES, r.faults  # a fault every 5-60 virtual s
    assert len(r.intervals) >= 2, "the faults moved leadership at least once"
    assert r.overlaps == [], (r.overlaps, r.faults)
    assert r.tokens_increase(), r.intervals
    assert len(r.leaders_at_end) == 1, ("one leader after the faults end", r.leaders_at_end, r.faults)


@pytest.mark.parametrize("seed", range(3))
def test_real_agents_watching_through_the_detection_topology_never_overlap(seed, sim_dir):
    """Nine agents in three racks of three, forced past the full mesh: each hears
    its rack, the nodes it observes (3 observers, 2 must agree) and the leader."""
    topology = {"full_mesh_up_to": 4, "domain_mesh_up_to": 3, "observers": 3, "agreement": 2}
    sim = SimCluster(seed + 100, sim_dir, nodes=9, topology=topology, rack_size=3)
    r = sim.run(MINUTES * 30)
    watched = [len(n.agent.heartbeats.peers.peers) for n in sim.nodes.values()
               if n.agent and n.agent.heartbeats.leader]
    assert watched and sum(watched) / len(watched) < 7, watched  # of 8 configured: its rack, subjects, leader
    assert len(r.intervals) >= 2 and r.overlaps == [], (r.overlaps, r.faults)
    assert r.tokens_increase(), r.intervals
    assert len(r.leaders_at_end) == 1, ("one leader after the faults end", r.leaders_at_end, r.faults)


def test_the_simulation_catches_a_leader_that_outlives_its_lease(sim_dir):
    """demote_after past the TTL is refused at start-up; slipped past that
    check, a leader paused beyond its lease acts after its successor began."""
    with pytest.raises(ConfigError, match="demote_after"):
        SimCluster(0, sim_dir, timing={"demote_after": 14.0})
    found = []
    for seed in range(10):
        r = SimCluster(seed, sim_dir / str(seed), unchecked_timing={"demote_after": 14.0}).run(600)
        found += r.overlaps
        if found:
            break
    assert found, "ten seeded runs with demote_after > lease_ttl and never an overlap"
    a, b = found[0]
    assert a.node != b.node and a.token != b.token
