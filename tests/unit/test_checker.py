"""The chaos checker catches each violation it claims to, and passes a clean run."""

from __future__ import annotations

import random

from vigil.chaos.checker import check
from vigil.chaos.schedules import FAULTS, Step, random_schedule


def lead(node, token, start, until, end=None):
    out = [{"node": node, "event": "start", "token": token, "at": start, "valid_until": until}]
    if end is not None:
        out.append({"node": node, "event": "end", "token": token, "at": end, "kind": "demoted"})
    return out


def write(token, value, at, accepted=True, readback=None):
    return {"at": at, "token": token, "register": 0, "value": value, "accepted": accepted,
            "readback": value if readback is None and accepted else readback}


def ack(node, token, value, at):
    return {"node": node, "token": token, "register": 0, "value": value, "at": at}


CLEAN = dict(
    leadership=lead("n1", 5, 0.0, 10.0, end=3.0) + lead("n2", 9, 3.5, 20.0),
    writes=[write(5, 1, 1.0), write(5, 2, 2.0), write(5, 3, 3.6, accepted=False), write(9, 1, 4.0)],
    acks=[ack("n1", 5, 1, 1.01), ack("n1", 5, 2, 2.01), ack("n2", 9, 1, 4.01)],
    final={0: 1}, recoveries=[0.4, 2.0])


def test_a_clean_run_passes():
    v = check(**CLEAN)
    assert v.ok, v.violations
    assert v.stats == {"leaderships": 2, "writes_accepted": 3, "writes_rejected": 1, "acks": 3,
                       "tokens_accepted": [5, 9]}


def test_overlapping_leaderships_are_caught():
    v = check(**CLEAN | {"leadership": lead("n1", 5, 0.0, 10.0) + lead("n2", 9, 3.5, 20.0)})
    assert any("overlap" in x for x in v.violations)


def test_one_token_held_by_two_nodes_is_caught():
    v = check(**CLEAN | {"leadership": CLEAN["leadership"] + lead("n3", 9, 30.0, 31.0)})
    assert any("token 9 was held by 2 nodes" in x for x in v.violations)


def test_a_stale_write_accepted_is_caught():
    v = check(**CLEAN | {"writes": CLEAN["writes"] + [write(5, 4, 5.0)], "final": {0: 4}})
    assert any("stale write accepted" in x and "token 5 after token 9" in x for x in v.violations)


def test_a_token_no_election_granted_is_caught():
    v = check(**CLEAN | {"writes": CLEAN["writes"] + [write(77, 1, 5.0)]})
    assert any("no election granted" in x for x in v.violations)


def test_an_acknowledged_write_missing_from_the_actuator_is_caught():
    v = check(**CLEAN | {"acks": CLEAN["acks"] + [ack("n2", 9, 2, 4.5)]})
    assert any("acknowledged write lost" in x for x in v.violations)


def test_a_write_with_anothers_token_is_caught():
    v = check(**CLEAN | {"acks": [ack("n3", 9, 1, 4.01)]})
    assert any("n3 wrote with token 9, which n2 holds" in x for x in v.violations)


def test_a_register_overwritten_behind_the_actuators_back_is_caught():
    assert any("ends at 7" in x for x in check(**CLEAN | {"final": {0: 7}}).violations)
    bad_readback = CLEAN["writes"][:1] + [write(5, 2, 2.0, readback=9)] + CLEAN["writes"][2:]
    assert any("read back 9" in x for x in check(**CLEAN | {"writes": bad_readback}).violations)


def test_no_leader_after_healing_is_caught():
    v = check(**CLEAN | {"recoveries": [0.4, None, 40.0]})
    assert [x for x in v.violations if "no leader within" in x] == [
        "fault 2: no leader within 15 s after healing (never)",
        "fault 3: no leader within 15 s after healing (40.00 s)"]


def test_random_schedules_follow_their_seed():
    a, b = random_schedule(random.Random(7)), random_schedule(random.Random(7))
    assert a == b
    schedules = [random_schedule(random.Random(seed)) for seed in range(200)]
    assert {len(x) for x in schedules} == {1, 2, 3}
    drawn = [s for x in schedules for s in x]
    assert {s.fault for s in drawn} == set(FAULTS), "every fault kind is drawn"
    for s in drawn:
        assert isinstance(s, Step) and s.target in ("leader", "standby", "any")
        assert s.fault == "kill" or 1.0 <= s.hold <= 6.0
        assert (s.percent in (10, 20, 30, 40)) == (s.fault == "loss")


def test_schedule_i_of_a_seed_is_the_same_in_any_batch():
    from vigil.chaos.run import schedules

    whole = schedules("", 5, seed=3)
    assert schedules("", 2, seed=3, skip=3) == whole[3:]
    assert [n for n, _ in whole] == [f"random-3-{i}" for i in range(1, 6)]
    named = schedules("leader_paused,split_all", 1, seed=3)
    assert [n for n, _ in named] == ["leader_paused", "split_all", "random-3-1"]
