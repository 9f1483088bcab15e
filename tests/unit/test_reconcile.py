from dataclasses import replace

from vigil.core.reconcile import (CAMPAIGN, DEMOTE, NONE, RESIGN, Campaign, Resign, WaitForHandover, decide,
                                  decide_states, handover)
from vigil.core.topology import Topology
from vigil.core.view import ClusterView, LeaderInfo, MemberInfo, Switchover

MEMBERS = {"a": MemberInfo("a", 100, lease=1), "b": MemberInfo("b", 90, lease=2),
           "c": MemberInfo("c", 80, lease=3)}


def view(me="a", **kw):
    base = ClusterView(me=me, now=10.0, session_ok=True, my_lease=MEMBERS[me].lease, i_lead=False,
                       my_token=0, healthy=True, members=dict(MEMBERS))
    return replace(base, **kw)


def test_best_candidate_campaigns_when_no_leader():
    d = decide(view("a"))
    assert (d.action, d.reason) == (CAMPAIGN, "no leader; best eligible candidate (priority 100)")


def test_lower_priority_waits_then_campaigns_after_grace():
    assert decide(view("b")).action == NONE
    assert "giving a (higher priority)" in decide(view("b")).reason
    d = decide(view("b", no_leader_for=1.5))
    assert d.action == CAMPAIGN and "a has not taken over" in d.reason


def test_suspected_best_candidate_is_skipped():
    d = decide(view("b", unheard=frozenset({"a"})))
    assert d.action == CAMPAIGN


def test_follow_existing_leader():
    d = decide(view("b", leader=LeaderInfo("a", 42, 1)))
    assert str(d) == "none: following a (token 42)"


def test_leader_holds():
    d = decide(view("a", i_lead=True, my_token=42, leader=LeaderInfo("a", 42, 1)))
    assert str(d) == "none: holding leadership (token 42)"


def test_no_session_demotes_leader_and_waits_otherwise():
    assert decide(view("a", session_ok=False, i_lead=True, my_token=1)).action == DEMOTE
    assert str(decide(view("b", session_ok=False))) == "none: waiting for an etcd session"


def test_leader_key_taken_by_other_demotes():
    d = decide(view("a", i_lead=True, my_token=5, leader=LeaderInfo("b", 9, 2)))
    assert d.action == DEMOTE and "held by b" in d.reason


def test_stale_own_key_is_released_or_waited_out():
    d = decide(view("a", leader=LeaderInfo("a", 5, 1)))
    assert d.action == RESIGN
    d = decide(view("a", leader=LeaderInfo("a", 5, 999)))
    assert d.action == NONE and "earlier lease" in d.reason


def test_switchover_resign_and_target_campaigns():
    lead = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1), switchover=Switchover("c"))
    assert str(decide(lead)) == "resign: switchover to c requested"
    by = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1), switchover=Switchover("c", "alice"))
    assert str(decide(by)) == "resign: switchover to c requested by alice", "the operator is named"
    assert decide(by).planned, "a switchover is planned: the front door is quiesced first (agent/release.py)"
    assert decide(view("c", switchover=Switchover("c"))).action == CAMPAIGN
    d = decide(view("a", switchover=Switchover("c")))
    assert d.action == NONE and "switchover target c" in d.reason


def test_switchover_to_ineligible_node_is_ignored():
    lead = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1),
                switchover=Switchover("c"), unheard=frozenset({"c"}))
    assert decide(lead).action == NONE


def test_unhealthy_leader_resigns_and_unhealthy_node_never_campaigns():
    lead = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1), healthy=False,
                health_reasons=("gpu lost",))
    assert str(decide(lead)) == "resign: unhealthy: gpu lost"
    assert not decide(lead).planned, "an unhealthy leader hands over at once, no quiesce"
    d = decide(view("a", healthy=False, health_reasons=("gpu lost",), no_leader_for=99))
    assert d.action == NONE and "gpu lost" in d.reason


def test_an_operators_standby_of_the_leader_is_a_planned_handover():
    lead = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1), states={"a": "maintenance"})
    d = decide(lead)
    assert d.action == RESIGN and d.planned


def test_maintenance_node_is_not_eligible():
    d = decide(view("a", states={"a": "maintenance"}, no_leader_for=99))
    assert d.action == NONE and "maintenance" in d.reason


def test_decide_states_marks_leader_standbys_and_failed():
    v = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1),
             members={"a": MEMBERS["a"], "b": MEMBERS["b"]},
             states={"a": "standby", "b": "standby", "c": "standby", "d": "maintenance"},
             unheard=frozenset())
    assert decide_states(v) == {"a": "active", "c": "failed"}
    assert decide_states(replace(v, i_lead=False)) == {}


AGREE = {n: replace(m, suspects=frozenset({"a"}) if n != "a" else frozenset())
         for n, m in MEMBERS.items()}


def fence_view(me="b", **kw):
    """`a` leads and is suspected by `me`; every other member's record suspects it too."""
    base = view(me, leader=LeaderInfo("a", 5, 1), unheard=frozenset({"a"}), members=AGREE,
                fenceable=frozenset({"a"}), suspected_for={"a": 0.3})
    return replace(base, **kw)


def test_best_standby_fences_a_suspected_leader():
    d = decide(fence_view("b"))
    assert d.action == "fence" and "leader a (token 5) suspected" in d.reason
    assert d.target == LeaderInfo("a", 5, 1), "the fence names its target: node, token and lease"


def test_a_leader_suspected_by_one_standby_only_is_not_fenced():
    alone = AGREE | {"c": MEMBERS["c"]}  # c still hears a: b's link is the likelier fault
    d = decide(fence_view("b", members=alone))
    assert d.action == NONE and "suspected by 1 of 2 members; fencing needs a majority" in d.reason
    two_nodes = {"a": MEMBERS["a"], "b": MEMBERS["b"]}  # no one else to ask: my view is the majority
    assert decide(fence_view("b", members=two_nodes)).action == "fence"


def test_a_suspicion_heard_in_a_heartbeat_corroborates_before_the_record_does():
    """c's member record does not yet say it suspects a, but its latest heartbeat
    does: that is c's newer word, and it counts; a heartbeat that lists no
    suspicion of a outweighs a record that still does."""
    record_behind = AGREE | {"c": MEMBERS["c"]}
    d = decide(fence_view("b", members=record_behind, heard_suspects={"c": frozenset({"a"})}))
    assert d.action == "fence"
    d = decide(fence_view("b", heard_suspects={"c": frozenset()}))
    assert d.action == NONE and "suspected by 1 of 2 members" in d.reason


def test_lower_priority_standby_leaves_fencing_to_the_best():
    d = decide(fence_view("c"))
    assert d.action == NONE and "b (higher priority) will fence it" in d.reason


def test_race_delay_when_a_higher_priority_peer_may_exist():
    v = fence_view("c", unheard=frozenset({"a", "b"}), suspected_for={"a": 0.3}, race_delay=0.5)
    d = decide(v)
    assert d.action == NONE and "fencing it in 0.2 s" in d.reason, "b outranks c: c waits 1 x 0.5 s"
    assert decide(replace(v, suspected_for={"a": 0.6})).action == "fence"
    for held_out in ("fenced", "maintenance", "draining", "held"):  # b knows it will not fence: no wait
        assert decide(replace(v, states={"b": held_out})).action == "fence", held_out
    assert decide(replace(v, states={"b": "standby"})).action == NONE, "a standby b may fence first"


def test_no_device_waits_for_lease_and_failed_fence_blocks():
    d = decide(fence_view("b", fenceable=frozenset()))
    assert d.action == NONE and "waiting for its lease to expire" in d.reason
    d = decide(fence_view("b", fence_blocked={"a": "BMC unreachable"}))
    assert d.action == NONE and "vigil fence a --confirm-off" in d.reason


def test_blocked_node_is_not_campaigned_over_after_its_lease_expires():
    d = decide(view("b", fence_blocked={"a": "BMC unreachable"}, no_leader_for=99))
    assert d.action == NONE and "blocked" in d.reason


def test_fenced_node_that_registers_again_becomes_standby():
    v = view("a", i_lead=True, my_token=5, leader=LeaderInfo("a", 5, 1),
             states={"a": "active", "b": "fenced", "c": "fenced"},
             members={"a": MEMBERS["a"], "b": MEMBERS["b"]})
    assert decide_states(v) == {"b": "standby"}


def test_a_leader_never_heard_is_not_fenced():
    d = decide(fence_view("b", suspected_for={}))
    assert d.action == NONE and "following a" in d.reason


def test_majority_is_of_the_configured_cluster_not_of_the_records_left():
    """Issue 9 #3: with c's record gone, b alone fenced a. Now c counts as a voter that does not agree."""
    without_c = {n: m for n, m in AGREE.items() if n != "c"}
    d = decide(fence_view("b", members=without_c, cluster_size=3))
    assert d.action == NONE and "suspected by 1 of 2 members; fencing needs a majority" in d.reason
    assert decide(fence_view("b", members=AGREE, cluster_size=3)).action == "fence"
    two_nodes = {"a": MEMBERS["a"], "b": MEMBERS["b"]}
    assert decide(fence_view("b", members=two_nodes, cluster_size=2)).action == "fence"


# -- node health verdicts and maintenance (issue 12) ----------------------------
def leading(**kw):
    return view("a", i_lead=True, my_token=42, leader=LeaderInfo("a", 42, 1), **kw)


def test_a_draining_or_failed_leader_hands_its_role_over():
    for verdict in ("draining", "failed"):
        d = decide(leading(verdict=verdict, verdict_reasons=("GPU 0: row remapping pending",)))
        assert d.action == RESIGN and d.reason.startswith(verdict) and "row remapping" in d.reason


def test_a_degraded_leader_hands_over_to_a_ready_member_only():
    d = decide(leading(verdict="degraded", verdict_reasons=("GPU 0: 84 °C",)))
    assert d.action == RESIGN and "b is ready to lead" in d.reason
    nobody_ready = {n: replace(m, healthy=n == "a") for n, m in MEMBERS.items()}
    d = decide(leading(verdict="degraded", verdict_reasons=("GPU 0: 84 °C",), members=nobody_ready))
    assert d.action == NONE and "no ready member" in d.reason


def test_a_degraded_node_is_not_promoted_unless_no_member_is_ready():
    degraded_a = dict(MEMBERS, a=replace(MEMBERS["a"], healthy=False, verdict="degraded"))
    assert decide(view("a", verdict="degraded", members=degraded_a)).action == NONE
    all_degraded = {n: replace(m, healthy=False, verdict="degraded") for n, m in MEMBERS.items()}
    assert decide(view("a", verdict="degraded", members=all_degraded)).action == NONE, "grace first"
    d = decide(view("a", verdict="degraded", verdict_reasons=("inlet 33 °C",), members=all_degraded,
                    no_leader_for=1.5))
    assert d.action == CAMPAIGN and "leading while degraded" in d.reason
    draining = {n: replace(m, healthy=False, verdict="draining") for n, m in MEMBERS.items()}
    assert decide(view("a", verdict="draining", members=draining, no_leader_for=9)).action == NONE


def test_an_operators_standby_moves_the_role_and_resume_allows_it_back():
    d = decide(leading(states={"a": "maintenance"}))
    assert d.action == RESIGN and "maintenance" in d.reason
    assert decide(view("a", states={"a": "maintenance"})).action == NONE
    assert decide(view("b", states={"a": "maintenance"})).action == CAMPAIGN
    assert decide(view("a", states={"a": "standby"})).action == CAMPAIGN


def test_decisions_carry_the_key_they_act_on():
    """The shell fences and resigns what was decided, never a re-read view: each
    decision is a typed effect with its targets."""
    d = decide(leading(verdict="draining", verdict_reasons=("GPU 0 lost",)))
    assert isinstance(d, Resign) and d.token == 42
    d = decide(leading(switchover=Switchover("b")))
    assert isinstance(d, Resign) and d.token == 42
    assert isinstance(decide(view("a")), Campaign), "a campaign acts on no existing key"
    assert str(d) == "resign: switchover to b requested", "logged and shown in /status as before"


def test_handover_acts_at_once_unless_a_live_peer_still_announces_itself_leader():
    assert handover(7, [], now=10.0, until=18.0) is None
    d = handover(7, ["n1"], now=10.0, until=18.0)
    assert isinstance(d, WaitForHandover) and d.peers == ("n1",) and d.until == 18.0
    assert d.action == "wait_for_handover" and "n1" in d.reason and "token 7" in d.reason
    assert handover(7, ["n1"], now=18.0, until=18.0) is None, "its self-demotion deadline has passed"


RING = frozenset(MEMBERS)


def test_only_key_ring_members_vote_on_a_fence():
    """B-L9: records under names outside the key ring (anyone with etcd write can add
    them) list the leader as suspect; they are no member's word and make no majority."""
    fakes = {n: MemberInfo(n, 10, lease=9, suspects=frozenset({"a"})) for n in ("x", "y", "z")}
    alone = AGREE | {"c": MEMBERS["c"]} | fakes  # only b (me) suspects a among the ring's members
    v = fence_view("b", members=alone, ring=RING, cluster_size=3)
    assert v.corroborated("a") == (1, 2, 2)
    d = decide(v)
    assert d.action == NONE and "suspected by 1 of 2 members; fencing needs a majority" in d.reason
    assert decide(replace(v, members=AGREE | fakes)).action == "fence", "the ring's own majority still fences"


def test_a_name_outside_the_key_ring_is_never_a_candidate():
    boss = MemberInfo("boss", 1000, lease=9)
    v = view("b", members=dict(MEMBERS) | {"boss": boss}, ring=RING)
    assert v.best_candidate() == "a" and not v.eligible("boss")


def clear_of(v):
    d = decide(v)
    assert d.action == "clear_leader_key", str(d)
    assert d.target == v.leader, "the removal names exactly the key judged"
    return d.reason


def test_a_lease_less_leader_key_is_no_leader_and_is_removed():
    """B4: `put(leader, "ghost")` with no lease left every node following it for good."""
    for name in ("ghost", "a", "b"):  # even one naming a real member, or me
        reason = clear_of(view("b", leader=LeaderInfo(name, 7, 0, 8), ring=RING))
        assert f"names {name!r} with no lease" in reason and "no leader" in reason


def test_a_leader_key_naming_no_ring_member_is_removed_even_under_a_live_lease():
    reason = clear_of(view("b", leader=LeaderInfo("ghost", 7, 44, 7), ring=RING))
    assert "names 'ghost', which is not in the key ring" in reason
    intruder = MemberInfo("intruder", 1000, lease=44)  # its record under another lease proves nothing
    reason = clear_of(view("b", leader=LeaderInfo("intruder", 7, 45, 7), ring=RING,
                           members=dict(MEMBERS) | {"intruder": intruder}))
    assert "not in the key ring" in reason


def test_a_leader_my_ring_does_not_hold_yet_is_neither_followed_nor_removed_nor_fenced():
    """A node added to the cluster campaigns (its key and member record under its own
    lease) before every ring has its key: removing the key would let a second leader
    campaign while it may still act; fencing it for silence would power off a leader."""
    newcomer = MemberInfo("d", 1000, lease=44)
    for unheard in (frozenset(), frozenset({"d"})):
        d = decide(view("b", leader=LeaderInfo("d", 7, 44, 7), ring=RING, unheard=unheard,
                        members=dict(MEMBERS) | {"d": newcomer}))
        assert d.action == NONE and "not in my key ring" in d.reason and "SIGHUP" in d.reason, str(d)


def test_a_leader_key_naming_one_member_under_anothers_lease_is_removed():
    """c's credential writes `leader = a` under c's own lease: no campaign of a's (a
    campaign binds a's own lease), and a would wait for it to expire for good."""
    for me in ("a", "b"):
        reason = clear_of(view(me, leader=LeaderInfo("a", 7, 3, 9), ring=RING))
        assert "names 'a' but is bound to c's lease" in reason


def test_a_key_that_may_be_an_earlier_incarnations_is_waited_out_never_removed():
    """Under a lease no member record is bound to, naming a ring member: it may be that
    member's key from before a restart, whose holder's deadline ends only with the lease."""
    d = decide(view("b", leader=LeaderInfo("a", 7, 999, 9), ring=RING))
    assert str(d) == "none: following a (token 7)"
    gone = {n: m for n, m in MEMBERS.items() if n != "c"}
    assert decide(view("b", leader=LeaderInfo("c", 7, 3, 7), ring=RING, members=gone)).action == NONE


def test_a_valid_leader_key_is_followed_and_held():
    assert str(decide(view("b", leader=LeaderInfo("a", 42, 1, 50), ring=RING))) == "none: following a (token 42)"
    d = decide(view("a", i_lead=True, my_token=42, leader=LeaderInfo("a", 42, 1, 50), ring=RING))
    assert d.action == NONE and "holding leadership" in d.reason


def test_a_leader_whose_key_is_rebound_to_another_lease_demotes():
    d = decide(view("a", i_lead=True, my_token=42, leader=LeaderInfo("a", 42, 3, 60), ring=RING))
    assert d.action == DEMOTE and "rebound from my lease to lease 3" in d.reason


def test_the_successor_of_a_suspected_leader_comes_from_another_failure_domain():
    """a and b share rack-1, c is in rack-2: a fault that took a (its rack's power
    or switch) is likeliest to take b next, so c, though of lower priority,
    fences a and takes over; b waits for it, and counts it in its race delay."""
    racked = Topology({"a": "rack-1", "b": "rack-1", "c": "rack-2"})
    d = decide(fence_view("c", topology=racked))
    assert d.action == "fence", d.reason
    d = decide(fence_view("b", topology=racked))
    assert d.action == NONE and "c (outside a's failure domain) will fence it" in d.reason
    v = fence_view("b", topology=racked)
    assert v.higher_priority_peers("a") == 1 and fence_view("c", topology=racked).higher_priority_peers("a") == 0
    one_rack = Topology({"a": "rack-1", "b": "rack-1", "c": "rack-1"})  # no other domain: priority alone
    assert decide(fence_view("b", topology=one_rack)).action == "fence"


def test_a_member_is_convicted_only_when_i_suspect_it_and_a_majority_agrees():
    """ClusterView.convicted (what lets a batch shard leave its owner before the
    owner's lease expires): my suspicion and a majority of the voters; never me."""
    assert fence_view("b").convicted() == frozenset({"a"}), "b and c both suspect a"
    alone = AGREE | {"c": MEMBERS["c"]}
    assert fence_view("b", members=alone).convicted() == frozenset(), "c still hears a"
    assert fence_view("b", suspected_for={}).convicted() == frozenset(), "others' word without mine"
    assert fence_view("b", heard_suspects={"c": frozenset()}).convicted() == frozenset(), \
        "c's newer word (its heartbeat) clears it"
    me = {n: replace(m, suspects=frozenset({"b"})) for n, m in MEMBERS.items()}
    assert fence_view("b", members=me, suspected_for={"b": 1.0}).convicted() == frozenset(), "never me"


def test_no_side_of_an_even_split_convicts_the_other():
    """Four nodes cut 2|2: a and b suspect c (b's word and mine), a majority of the
    voters a fence counts, yet only 2 of 4: no conviction; nor in a cluster of two."""
    four = {n: MemberInfo(n, 100 - i, lease=i + 1) for i, n in enumerate("abcd")}
    split = {**four, "b": replace(four["b"], suspects=frozenset({"c", "d"}))}
    v = view("a", members=split, suspected_for={"c": 1.0, "d": 1.0}, cluster_size=4,
             unheard=frozenset({"c", "d"}))
    assert v.convicted() == frozenset()
    three = {**split, "d": replace(four["d"], suspects=frozenset({"c"}))}
    assert replace(v, members=three, suspected_for={"c": 1.0}, unheard=frozenset({"c"})).convicted() == \
        frozenset({"c"}), "3 of 4 agree: convicted"
    pair = {"a": four["a"], "c": four["c"]}
    assert view("a", members=pair, suspected_for={"c": 1.0}, cluster_size=2).convicted() == frozenset()
