"""Review B11, for real: every agent of a lab runs under libfaketime, and the
leader's wall clock, then a standby's, is stepped by +30 s and -30 s while
the lab runs (an NTP step; the monotonic clock stays real). A clock step is
an alarm: the peers record `clock_skew` (and `clock_skew_cleared` when it is
back), and nobody suspects anyone, nobody fences, the leader and its token
stay. At 7cf5bfd every heartbeat of the stepped node was dropped as stale,
its peers suspected it within ~250 ms (bench/hostile.py measures both)."""

from __future__ import annotations


import pytest

from vigil.lab import Lab
from vigil.lab.cluster import LAB_TIMING
from vigil.testing.faketime import SteppedClock
from vigil.testing.prometheus import Prometheus
from tests.integration.conftest import diagnose


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("clockstep")
    # The default lease timers (10 s, not the lab's 2 s) and detection within ~1.3 s instead of
    # ~0.3 s: a shared 2-core runner stalls an agent for 0.3-3 s now and then, which is load,
    # not a clock step. A stepped node that goes silent (as at 7cf5bfd) is still suspected
    # within the 3 s each step is held.
    lab = Lab.create(root / "lab", 3, timing={"heartbeat_interval": LAB_TIMING["heartbeat_interval"],
                                              "acceptable_pause": 1.0})
    clocks = {n.name: SteppedClock(root / f"{n.name}.faketime") for n in lab.nodes}
    lab.agent_env = {name: c.env() for name, c in clocks.items()}
    lab.start()
    try:
        yield lab, clocks
    finally:
        lab.down()


def skewed_heard(lab: Lab, observers: list[str]) -> dict[str, int]:
    """How many packets each observer delivered although their send time was off."""
    return {o: (lab.agent_status(o) or {}).get("heartbeat", {}).get("received", {}).get("skewed", 0)
            for o in observers}


def hold_step(lab: Lab, clock: SteppedClock, offset: float, observers: list[str]) -> None:
    """Step, then wait until every observer delivered 30 more skewed heartbeats (3 s
    at 100 ms): many times the ~250 ms after which a silent peer is suspected."""
    before = skewed_heard(lab, observers)
    clock.step_to(offset)
    lab.wait_for(lambda: all(n >= before[o] + 30 for o, n in skewed_heard(lab, observers).items()), 30,
                 f"30 heartbeats sent {offset:+g} s off, delivered to {observers}", poll=0.2)


def kinds(events: list[dict], *names: str) -> list[dict]:
    return [e for e in events if e["kind"] in names]


def step_both_ways(lab: Lab, clocks: dict[str, SteppedClock], stepped: str, seen: set[str],
                   prometheus: Prometheus | None) -> None:
    """Step `stepped`'s clock +30 s, then -30 s, then back; with `prometheus`, check
    while it is +30 s off that `vigil diagnose` and the alert rules name it."""
    others = sorted(set(clocks) - {stepped})
    hold_step(lab, clocks[stepped], +30, others)
    if prometheus is not None:
        found = diagnose(lab)
        assert "sees a peer's clock off" in found[0]["symptom"] and "chrony" in found[0]["fix"], found[:2]
        assert lab.wait_for(lambda: prometheus.names("pending") & {"VigilClockSkew"}, 15,
                            "VigilClockSkew pending") == {"VigilClockSkew"}
        assert prometheus.names() == set(), "a skew alerts after two minutes"
    hold_step(lab, clocks[stepped], -30, others)
    clocks[stepped].step_to(0)
    lab.wait_for(lambda: len([e for e in kinds(lab.events(), "clock_skew_cleared")
                              if e.get("subject") == stepped and e["id"] not in seen]) >= 2, 30,
                 f"{others} see {stepped}'s clock back", poll=0.2)


def test_a_clock_step_of_the_leader_or_a_standby_is_an_alarm_not_a_failover(lab):
    lab, clocks = lab
    leader, token = lab.leader()
    standby = sorted(set(clocks) - {leader})[0]
    lab.wait_for(lambda: all((lab.agent_status(n) or {}).get("events", {}).get("pending") == 0 for n in clocks),
                 30, "the start's events written")
    seen = {e["id"] for e in lab.events()}
    prometheus = Prometheus.for_lab(lab)
    try:
        lab.wait_for(prometheus.ready, 30, "Prometheus scraping every agent")
        assert prometheus.names() == set() and prometheus.alerts("pending") == [], "a healthy lab: no alert"
        for stepped in (leader, standby):
            step_both_ways(lab, clocks, stepped, seen, prometheus if stepped == leader else None)
    finally:
        prometheus.stop()
    new = [e for e in lab.events() if e["id"] not in seen]
    # A suspicion of a node whose clock never moved would be this shared runner's load, not
    # a clock step (at 7cf5bfd the stepped node was suspected by both peers at every step).
    bad = [e for e in new if (e["kind"] == "peer_suspected" and e.get("peer") in (leader, standby))
           or e["kind"] in ("fencing_started", "node_fenced") or e["kind"].startswith("leader_")]
    assert bad == [], "\n".join(f"{e['node']} {e['kind']} {e['cause']} at {e['at']:.2f}" for e in bad)
    assert lab.leader() == (leader, token), "the leader and its token stayed"
    alarms = {(e["node"], e["subject"]) for e in kinds(new, "clock_skew")}
    assert {(o, leader) for o in clocks if o != leader} <= alarms, alarms
    assert {(o, standby) for o in clocks if o != standby} <= alarms, alarms
    assert all(abs(e["skew"]) == pytest.approx(30, abs=1) for e in kinds(new, "clock_skew")
               if e["subject"] in (leader, standby) and e["node"] != e["subject"])
