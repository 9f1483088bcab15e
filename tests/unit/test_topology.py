"""The detection topology (vigil.core.topology): who watches whom, and the
H-of-K verdict the view draws from it (vigil.core.view)."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.core.reconcile import decide, decide_states
from vigil.core.topology import Topology, TopologySettings
from vigil.core.view import ClusterView, LeaderInfo, MemberInfo


def racks(n: int, per_rack: int) -> dict[str, str]:
    return {f"n{i:04d}": f"rack-{i // per_rack}" for i in range(n)}


memberships = st.builds(
    lambda n, per, k: (racks(n, per), TopologySettings(observers=k, agreement=max(1, k * 3 // 4))),
    st.integers(1, 120), st.integers(1, 40), st.integers(1, 10))


@settings(max_examples=60, deadline=None)
@given(memberships, st.data())
def test_watchers_and_subjects_are_each_others_inverse(m, data):
    domains, s = m
    t = Topology(domains, s)
    leader = data.draw(st.sampled_from([None, *sorted(domains)]))
    for x in domains:
        for y in domains:
            assert (y in t.watchers(x, leader)) == (x in t.subjects(y, leader)), (x, y)
        assert x not in t.watchers(x, leader) and x not in t.subjects(x, leader)


@settings(max_examples=60, deadline=None)
@given(memberships)
def test_every_node_has_k_observers_outside_its_mesh_when_there_are_enough(m):
    domains, s = m
    t = Topology(domains, s)
    for x in domains:
        obs = t.observers(x)
        assert not obs & t.mesh(x) and x not in obs
        outside = len(domains) - 1 - len(t.mesh(x))
        if not t.full_mesh:
            assert len(obs) == min(s.observers, outside)
            assert 1 <= t.need(x) <= len(obs) or not obs


def test_the_same_membership_gives_the_same_topology_in_any_order():
    domains = racks(200, 10)
    shuffled = list(domains.items())
    random.Random(7).shuffle(shuffled)
    a, b = Topology(domains), Topology(dict(shuffled))
    assert all(a.observers(x) == b.observers(x) and a.mesh(x) == b.mesh(x) for x in domains)


def test_small_clusters_stay_a_full_mesh():
    domains = racks(16, 4)
    t = Topology(domains)
    assert t.full_mesh
    assert all(t.watchers(x) == set(domains) - {x} for x in domains)


def test_load_per_node_is_flat_from_60_to_1000_nodes():
    """The point of it all: fan-in and fan-out do not grow with N."""
    worst = {}
    for n in (60, 300, 1000):
        t = Topology(racks(n, 10))
        fan = [t.load(x, "n0000") for x in t.members if x != "n0000"]
        worst[n] = max(max(o, i) for o, i in fan)
        mean_in = sum(i for _, i in fan) / len(fan)
        assert 9 + 8 <= mean_in <= 9 + 8 + 1 + 0.5, (n, mean_in)  # mesh + K + the leader
    assert worst[1000] <= 1.5 * worst[60], worst
    leader_out, _ = Topology(racks(1000, 10)).load("n0000", "n0000")
    assert leader_out == 999  # only the leader sends to all


def test_a_lost_rack_is_judged_from_outside_it():
    t = Topology(racks(60, 10))
    rack = t.domain_members("rack-2")
    for x in rack:
        assert not t.observers(x) & rack


def view(t: Topology, me: str, suspects: dict[str, frozenset[str]], leader: str = "n0000",
         unheard: frozenset[str] = frozenset()) -> ClusterView:
    members = {m: MemberInfo(m, suspects=suspects.get(m, frozenset())) for m in t.members}
    return ClusterView(me=me, now=10.0, session_ok=True, my_lease=1, i_lead=me == leader, my_token=5,
                       healthy=True, leader=LeaderInfo(leader, 5, 1), members=members,
                       states={m: "standby" for m in t.members}, unheard=unheard,
                       cluster_size=len(t.members), topology=t)


def test_h_of_k_observers_convict_and_fewer_do_not():
    t = Topology(racks(60, 10))
    me, x = "n0000", "n0033"
    assert x not in t.subjects(me, me)
    obs = sorted(t.observers(x))
    need = t.need(x)
    assert need == 6
    few = view(t, me, {o: frozenset({x}) for o in obs[:need - 1]})
    assert few.heard(x) and few.eligible(x) and "n0033" not in decide_states(few)
    enough = view(t, me, {o: frozenset({x}) for o in obs[:need]})
    assert not enough.heard(x) and not enough.eligible(x)
    assert decide_states(enough)[x] == "failed"


def test_suspicion_by_non_observers_convicts_no_one():
    t = Topology(racks(60, 10))
    x = "n0033"
    others = [m for m in t.members if m not in t.observers(x) and m != x][:40]
    v = view(t, "n0000", {o: frozenset({x}) for o in others})
    assert v.heard(x)


def fence_view(t: Topology, lead: str, me: str, voters) -> ClusterView:
    """`me` suspects the leader `lead`, may fence it and comes first in succession;
    `voters` publish that they suspect it too."""
    v = view(t, me, {o: frozenset({lead}) for o in voters}, leader=lead)
    return replace(v, i_lead=False, suspected_for={lead: 5.0}, fenceable=frozenset({lead}), race_delay=0.0,
                   members={m: replace(i, priority=200 if m == me else 100) for m, i in v.members.items()})


def test_above_the_mesh_a_leader_is_fenced_by_a_majority_of_its_observers_and_rack_never_by_the_rest():
    """Every node hears the leader, but only its observers and its failure domain's
    mesh publish their suspicions (a crash must not make every survivor write its
    record): a majority of them, and at least H of K, fence."""
    t = Topology(racks(60, 10))
    lead = "n0000"
    voters = sorted(t.observers(lead) | t.mesh(lead))
    need = max(len(voters) // 2 + 1, t.need(lead))
    assert len(voters) == 17 and need == 9
    me = next(m for m in sorted(t.members) if m not in voters and t.domains[m] != t.domains[lead])
    others = [m for m in t.members if m not in voters and m not in (lead, me)]
    assert fence_view(t, lead, me, voters[:need]).corroborated(lead) == (need, len(voters), need)
    assert decide(fence_view(t, lead, me, voters[:need])).action == "fence"
    d = decide(fence_view(t, lead, me, voters[:need - 1] + others))  # 41 others: no voter's word
    assert d.action != "fence" and f"suspected by {need - 1} of {len(voters)} of its observers" in d.reason


def test_a_leader_with_one_observer_is_not_fenced_on_its_word_whatever_it_hears():
    """16 nodes in the leader's rack, one in another: that one is the leader's only
    observer, first in succession, and on a bad link it may hear nobody in the
    rack. Its word alone fences nothing: the lease decides."""
    domains = {f"a{i:02d}": "rack-a" for i in range(16)} | {"b00": "rack-b"}
    t = Topology(domains)
    assert not t.full_mesh and t.observers("a00") == frozenset({"b00"}) and "a05" in t.subjects("b00")
    lossy = fence_view(t, "a00", "b00", [])
    assert lossy.corroborated("a00") == (1, 16, 9) and decide(lossy).action != "fence"
    deaf = replace(lossy, unheard=frozenset(m for m in domains if m.startswith("a")))
    agree, present, need = deaf.corroborated("a00")
    assert (agree, present) == (1, 1) and need == 6 and decide(deaf).action != "fence"


def test_a_leader_whose_whole_rack_lost_power_is_fenced_on_its_observers_word():
    """Its rack's mesh is dead too: those voters are gone (their own observers
    convict them), so the leader's surviving observers decide."""
    t = Topology(racks(60, 10))
    lead = "n0000"
    rack = sorted(t.domain_members(t.domains[lead]))
    words: dict[str, set[str]] = {}
    for o in t.observers(lead):
        words.setdefault(o, set()).add(lead)
    for m in rack[1:]:
        for o in t.observers(m):
            words.setdefault(o, set()).add(m)
    me = next(m for m in sorted(t.members) if m not in rack and m not in words)
    v = fence_view(t, lead, me, [])
    v = replace(v, members={m: replace(i, suspects=frozenset(words.get(m, ()))) for m, i in v.members.items()})
    agree, present, need = v.corroborated(lead)
    assert (agree, present, need) == (8, 8, 6)
    assert decide(v).action == "fence"
    alive = replace(v, members={m: replace(i, suspects=frozenset({lead}) if lead in words.get(m, ()) else
                                           frozenset()) for m, i in v.members.items()})
    assert alive.corroborated(lead) == (8, 17, 9) and decide(alive).action != "fence", "its rack still hears it"


def test_a_watched_peer_is_judged_by_my_own_detector():
    t = Topology(racks(60, 10))
    me = "n0001"
    mate = "n0002"  # same rack: in my mesh
    assert mate in t.subjects(me)
    v = view(t, me, {}, unheard=frozenset({mate}))
    assert not v.heard(mate) and not v.eligible(mate)


def test_a_whole_rack_failing_within_the_window_is_one_lost_domain():
    t = Topology(racks(60, 10))
    rack = sorted(t.domain_members("rack-3"))
    at = {m: 100.0 + i * 0.5 for i, m in enumerate(rack)}  # one by one over 4.5 s
    assert t.lost_domains(at, 10.0) == {"rack-3": rack}
    assert t.lost_domains(at, 4.0) == {}  # spread wider than the window: separate failures
    assert t.lost_domains({m: at[m] for m in rack[1:]}, 10.0) == {}  # one member still up
    assert t.lost_domains({"n0001": 1.0, "n0002": 1.0}, 10.0) == {}


@settings(max_examples=60, deadline=None)
@given(memberships, st.data())
def test_only_observers_outside_the_mesh_are_paced_and_never_by_the_leader(m, data):
    """Who gets every heartbeat and who every `observer_every`th: a mesh peer and
    anyone hearing the leader always get every one, and both ends agree on it
    (the receiver's detector expects the sender's pace)."""
    domains, s = m
    t = Topology(domains, s)
    leader = data.draw(st.sampled_from(sorted(domains) + [None]))
    for sender in t.members:
        for receiver in t.watchers(sender, leader):
            paced = t.paced(sender, receiver, leader)
            assert not (paced and (receiver in t.mesh(sender) or sender == leader))
            if not t.full_mesh and sender != leader and receiver in t.observers(sender) \
                    and receiver not in t.mesh(sender):
                assert paced
    assert not Topology(domains, TopologySettings(observer_every=1)).paced(t.members[0], t.members[-1])


def test_a_node_of_a_large_cluster_receives_a_fraction_of_the_packets_it_hears():
    from vigil.core.plan import plan

    p = plan(racks(300, 10))["per_node"]
    every = plan(racks(300, 10), TopologySettings(observer_every=1))["per_node"]
    assert p["peers_heard_mean"] == every["peers_heard_mean"]
    assert p["rx_packets_s_mean"] < 0.7 * every["rx_packets_s_mean"]
