"""`vigil diagnose`'s matrix (vigil.diagnose): for each row, evidence as the
agents write it (events, status, kernel and corosync lines) and the finding
that must come first, with its fix; ranking; and rules fed anything never
fail (an odd record is not the end of a diagnosis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.cli.diagnose_cmd import render
from vigil.core.health import HealthPolicy
from vigil.probes.base import Reading
from vigil.probes.xid import parse_xid
from vigil.diagnose import cluster_rules, host_rules
from vigil.diagnose.finding import CRITICAL, ERROR, INFO, WARNING, Evidence, diagnose

RULES = (*cluster_rules.RULES, *host_rules.RULES)
T = 1_800_000_000.0


def ev(kind, node="n2", at=0.0, **details):
    return {"kind": kind, "node": node, "at": T + at, "cause": details.pop("cause", kind), **details}


def status(leader="n2", **members):
    return {"leader": {"name": leader, "token": 7} if leader else None, "bad_records": {},
            "members": [{"name": n, "state": s, "verdict": v, "engine": None}
                        for n, (s, v) in sorted(members.items())]}


HEALTHY = status(n1=("standby", "ready"), n2=("active", "ready"), n3=("standby", "ready"))


def first(evidence):
    found = diagnose(evidence, RULES)
    assert found, "a finding"
    assert not [f for f in found if f.severity == INFO and "could not read" in f.symptom], found
    return found[0]


def test_a_failed_fence_blocks_the_takeover_and_says_how_to_confirm_by_hand():
    e = Evidence([ev("fencing_started", subject="n1"),
                  ev("fencing_level_failed", at=1, subject="n1", cause="ipmi: connection timed out", level=0),
                  ev("fencing_failed", at=2, subject="n1")],
                 status(None, n1=("failed", "down"), n2=("standby", "ready"), n3=("standby", "ready")), now=T + 3)
    f = first(e)
    assert f.severity == CRITICAL and f.symptom == "the takeover from n1 is blocked: fencing n1 failed"
    assert "ipmi: connection timed out" in f.cause and "vigil fence n1 --confirm-off" in f.fix
    assert "power off" in f.fix and len(f.evidence) == 2
    nl = [x for x in diagnose(e, RULES) if x.symptom == "the cluster has no leader"]
    assert nl and "fencing n1 failed" in nl[0].cause
    e.events.append(ev("node_fenced", at=9, subject="n1"))
    assert not [x for x in diagnose(e, RULES) if "blocked" in x.symptom], "confirmed off: no longer blocked"


def test_no_leader_because_no_member_may_lead():
    e = Evidence([], status(None, n1=("held", "ready"), n2=("draining", "draining"), n3=("standby", "failed")))
    f = first(e)
    assert f.symptom == "the cluster has no leader" and f.cause.startswith("no member may lead")
    assert "vigil resume" in f.fix
    assert first(Evidence([], None, "etcd did not answer kv/range")).symptom.startswith("etcd does not answer")


def test_a_vip_that_does_not_start_names_the_interface_or_the_other_holder():
    e = Evidence([ev("resource_start_failed", vip="10.231.0.100/24",
                     cause="VIP 10.231.0.100/24 cannot start: interface eth9 does not exist")], HEALTHY)
    f = first(e)
    assert f.symptom == "VIP 10.231.0.100/24 does not start on n2" and "vips[].interface" in f.fix
    e.events.append(ev("resource_started", at=5, vip="10.231.0.100/24"))
    assert not [x for x in diagnose(e, RULES) if "VIP" in x.symptom]
    taken = Evidence([ev("resource_start_failed", vip="10.231.0.100/24 on eth1",
                         cause="VIP 10.231.0.100/24 on eth1 cannot start: 10.231.0.100 is in use by another "
                               "host (MAC 02:00:00:00:00:09)")], HEALTHY)
    assert "`arping -D -I eth1 10.231.0.100`" in first(taken).fix


def test_an_xid_that_drained_a_node_is_named_with_its_kernel_line_and_fix():
    kernel = ["[12.3] NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus."]
    e = Evidence([ev("health_verdict", node="n3", verdict="failed",
                     reasons=["XID 79 on GPU 0: GPU has fallen off the bus (2 s ago; holds 600 s)"])],
                 HEALTHY, kernel=kernel)
    f = first(e)
    assert f.symptom == "n3 is failed: XID 79 on GPU 0" and "reboot n3" in f.fix
    assert any("NVRM: Xid" in x for x in f.evidence)
    ecc = Evidence([ev("health_verdict", node="n1", verdict="draining", reasons=["XID 48 on GPU 1: double-bit"])],
                   HEALTHY)
    assert "nvidia-smi -r -i 1" in first(ecc).fix
    alone = Evidence([], HEALTHY, kernel=["NVRM: Xid (PCI:0000:3b:00): 119, GSP RPC timeout"])
    assert first(alone).symptom == "the kernel log shows XID 119"


def test_an_xid_named_by_its_pci_address_keeps_the_whole_address():
    """The kernel log names a GPU by its PCI address, which has colons: the verdict's
    reason as HealthPolicy writes it, read back whole."""
    policy = HealthPolicy()
    line = "NVRM: Xid (PCI:0000:3b:00): 48, pid=7, DBE (double bit error) ECC error"
    reading = Reading("xid", 5.0, True, {"xids": [parse_xid(line).to_json()]})
    verdict = policy.judge([reading], 5.0)
    e = Evidence([ev("health_verdict", node="n2", verdict=verdict.state, reasons=list(verdict.reasons))],
                 HEALTHY, kernel=[line])
    f = first(e)
    assert f.symptom == f"n2 is {verdict.state}: XID 48 on GPU 0000:3b:00", f.symptom
    assert "nvidia-smi -r -i 0000:3b:00" in f.fix


def test_a_plc_fault_code_heat_and_a_full_drain_budget():
    plc = Evidence([ev("health_verdict", node="n3", verdict="draining",
                       reasons=["psu: fault code 0x88 (power imbalance)"])], HEALTHY)
    f = first(plc)
    assert "fault code 0x88 (power imbalance)" in f.symptom and "PLC clears" in f.fix
    warm = Evidence([ev("health_verdict", node="n1", verdict="draining",
                        reasons=["inlet: 31.2 °C rising 0.9 °C/min, at 32 °C in 52 s"])], HEALTHY)
    assert first(warm).symptom == "n1 is draining for heat"
    budget = Evidence([ev("health_verdict", node=n, at=i, verdict="degraded",
                          reasons=["drain deferred by the drain budget (1 at once): 1 member(s) already out",
                                   "XID 48 on GPU 0: double-bit ECC error"]) for i, n in enumerate(("n2", "n3"))],
                      status(n1=("draining", "draining"), n2=("active", "degraded"), n3=("standby", "degraded")))
    names = [x.symptom for x in diagnose(budget, RULES)]
    assert "the drain budget is full: 2 node(s) wait to drain for health" in names
    assert not [x for x in names if "for heat" in x], "a deferral is not heat"
    # Every drain is announced (deferred) for a moment first: with the places free, not a full budget.
    announced = Evidence([ev("health_verdict", node="n2", verdict="degraded",
                             reasons=["drain deferred by the drain budget (1 at once): 0 member(s) already out "
                                      "for health (); serving degraded until a place frees",
                                      "XID 48 on GPU 0: double-bit ECC error"])],
                         status(n2=("active", "degraded")))
    found = [x for x in diagnose(announced, RULES) if "drain" in x.symptom]
    assert [(x.severity, x.symptom) for x in found] == [
        (INFO, "1 node(s) announced a drain for health: they take the budget's places in turn")]


def test_failed_held_and_lost_domain_nodes_and_etcd_trouble():
    e = Evidence([ev("peer_suspected", node="n1", peer="n3", cause="n3: silent for 250 ms"),
                  ev("state_changed", node="n2", at=1, subject="n3", state="failed", cause="n3 is now failed"),
                  ev("domain_lost", node="n2", at=2, subject="rack-2", cause="rack-2 lost at once: n3")],
                 status(n1=("standby", "ready"), n2=("active", "ready"), n3=("failed", "down"), n4=("held", "ready")))
    symptoms = [f.symptom for f in diagnose(e, RULES)]
    assert symptoms[:2] == ["failure domain rack-2 was lost at once", "n3 is failed"], symptoms
    assert "n4 is held out (flap damping)" in symptoms
    etcd = Evidence([ev("session_lost", node="n1", cause="lease 1 expired")], HEALTHY,
                    logs={"n2.log": ["WARNING keep-alive of lease 5 failed (1 in a row): etcd did not answer"]})
    f = first(etcd)
    assert f.severity == ERROR and "etcd" in f.symptom and "endpoint health" in f.fix


def test_an_unreachable_bmc_and_a_clock_skew_until_they_clear():
    e = Evidence([ev("fence_device_unreachable", subject="n1", device="ipmi n1", cause="timed out"),
                  ev("clock_skew", at=1, subject="n3", cause="n3's clock is +3.1 s from ours")], HEALTHY)
    symptoms = [f.symptom for f in diagnose(e, RULES)]
    assert symptoms[0] == "ipmi n1 does not answer: a fence of n1 would fail"
    assert "n2 sees a peer's clock off" in symptoms
    e.events += [ev("fence_device_reachable", at=2, subject="n1", device="ipmi n1"),
                 ev("clock_skew_cleared", at=3, subject="n3")]
    assert diagnose(e, RULES) == []


def test_corosync_ring_trouble_for_operators_coming_from_pacemaker():
    e = Evidence([], HEALTHY, corosync=[
        "Dec 06 10:00:01 [1234] n1 corosync notice  [TOTEM ] Retransmit List: 1a 1b",
        "Dec 06 10:00:05 [1234] n1 corosync error   [TOTEM ] FAILED TO RECEIVE"])
    found = diagnose(e, RULES)
    assert found[0].severity == ERROR and "5405" in found[0].fix
    assert found[0].symptom == "corosync on n1 failed to receive the ring's messages (FAILED TO RECEIVE)"
    for line, host in (("Dec 06 10:00:05.120 [1234] n2 corosync error   [TOTEM ] FAILED TO RECEIVE", "n2"),
                       ("Dec 06 10:00:05 n3 corosync[1234]:   [TOTEM ] FAILED TO RECEIVE", "n3"),
                       ("FAILED TO RECEIVE", None)):
        f = diagnose(Evidence([], HEALTHY, corosync=[line]), RULES)[0]
        assert f.symptom.startswith(f"corosync on {host} failed" if host else "corosync: a node failed"), f.symptom
    assert found[1].severity == WARNING and "retransmit" in found[1].symptom


def test_ranking_and_the_text_an_operator_reads():
    e = Evidence([ev("clock_skew", subject="n3"), ev("fencing_failed", at=5, subject="n1")], HEALTHY)
    found = diagnose(e, RULES)
    assert [f.severity for f in found] == [CRITICAL, WARNING]
    text = render(found, len(found), ["dmesg: Operation not permitted"], 2)
    assert text.startswith("1. [CRITICAL] the takeover from n1 is blocked") and "not read: dmesg" in text
    assert render([], 0, [], 7).startswith("no findings: 7 events read")


values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40),
                   st.lists(st.text(max_size=20), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                st.text(max_size=5), max_size=2))
event = st.dictionaries(st.sampled_from(["kind", "node", "at", "cause", "subject", "vip", "device", "verdict",
                                         "reasons", "state", "peer"]), values, max_size=8)
kinds = st.sampled_from(["fencing_failed", "fencing_level_failed", "resource_start_failed", "health_verdict",
                         "state_changed", "session_lost", "fence_device_unreachable", "clock_skew", "domain_lost",
                         "decision_loop_failed", "node_fenced", "x"])


member = st.dictionaries(st.sampled_from(["name", "state", "verdict", "engine", "reasons"]),
                         st.one_of(values, st.dictionaries(st.sampled_from(["verdict", "reason"]), values)),
                         max_size=5)
status_doc = st.dictionaries(st.sampled_from(["leader", "members", "bad_records"]),
                             st.one_of(values, st.lists(member, max_size=4)))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(kinds, event), max_size=12), st.one_of(st.none(), status_doc),
       st.lists(st.text(max_size=120), max_size=5))
def test_no_rule_fails_on_any_evidence(events, stat, lines):
    e = Evidence([{**d, "kind": k} for k, d in events], stat, kernel=lines, corosync=lines, logs={"a": lines})
    found = diagnose(e, RULES)
    assert not [f for f in found if "could not read" in f.symptom], [f.cause for f in found if
                                                                     "could not read" in f.symptom]
