"""Flap damping as pure code: threshold, window, operator clear, and the
mass-ejection guard; the leader's states with a node held out."""

from dataclasses import replace

from vigil.core.damping import DampingRules, FlapDamper
from vigil.core.reconcile import decide, decide_states
from vigil.core.view import ClusterView, LeaderInfo, MemberInfo

MEMBERS = {n: MemberInfo(n, 100 - i, lease=i + 1) for i, n in enumerate("abcdef")}


def test_a_node_is_held_after_threshold_failures_until_the_window_passes():
    d = FlapDamper(DampingRules(threshold=3, window=600))
    for t in (0, 100, 200):
        assert d.held(t, 6) == {}
        d.failed("c", t)
    held = d.held(200, 6)
    assert list(held) == ["c"] and "failed 3 times in 600 s" in held["c"] and "400 s more" in held["c"]
    assert d.held(599, 6) and d.held(600, 6) == {}, "the oldest failure left the window"


def test_an_operator_clears_a_hold_and_zero_disables_damping():
    d = FlapDamper(DampingRules(threshold=2, window=600))
    d.failed("c", 0)
    d.failed("c", 1)
    d.clear("c")
    assert d.held(2, 6) == {}
    never = FlapDamper(DampingRules(threshold=0))
    for t in range(10):
        never.failed("c", t)
    assert never.held(10, 6) == {}


def test_the_mass_ejection_guard_keeps_most_of_the_cluster_in():
    d = FlapDamper(DampingRules(threshold=1, window=600, max_held_fraction=0.34))
    for i, n in enumerate("abcde"):
        for _ in range(i + 1):
            d.failed(n, 0)
    assert sorted(d.held(1, 6)) == ["d", "e"], "only a third, those that failed most"


def test_the_leader_writes_held_and_a_held_node_never_leads():
    v = ClusterView(me="a", now=10.0, session_ok=True, my_lease=1, i_lead=True, my_token=5, healthy=True,
                    leader=LeaderInfo("a", 5, 1), members=dict(MEMBERS),
                    states={n: "standby" for n in MEMBERS} | {"a": "active"}, held_out={"c": "flapping"})
    assert decide_states(v) == {"c": "held"}
    follower = replace(v, me="c", i_lead=False, leader=None, my_lease=3, held_out={},
                       states=v.states | {"c": "held"}, members={"c": MEMBERS["c"]})
    assert decide(follower).action == "none"
    assert decide_states(replace(v, states=v.states | {"c": "held"}, held_out={})) == {"c": "standby"}


def test_the_guard_holds_at_most_a_share_of_each_failure_domain_too():
    """Six nodes flap in rack-1 (of 9 nodes) and none elsewhere: the cluster-wide
    guard alone would hold 9 x 0.34 = 3 of rack-1's, a third of the cluster but
    half of the rack; per domain only int(0.34 x 6) = 2 are held, those that
    failed most, and a flapping node of another rack still takes the room left."""
    domains = {**{n: "rack-1" for n in "abcdef"}, **{n: "rack-2" for n in "ghi"}}
    d = FlapDamper(DampingRules(threshold=1, window=600, max_held_fraction=0.34))
    for i, n in enumerate("abcdef"):
        for _ in range(i + 1):
            d.failed(n, 0)
    assert sorted(d.held(1, 9)) == ["d", "e", "f"], "without domains: a third of the cluster"
    assert sorted(d.held(1, 9, domains)) == ["e", "f"]
    d.failed("g", 0)
    assert sorted(d.held(1, 9, domains)) == ["e", "f", "g"]
    one = {n: "rack-1" for n in "abcdefghi"}  # a single domain: the cluster-wide guard alone
    assert sorted(d.held(1, 9, one)) == ["d", "e", "f"]
