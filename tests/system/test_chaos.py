"""System tests (root): the chaos harness on a lab in network namespaces
(a host per namespace on a bridge, faults made with nftables and signals),
with BMCs, a Modbus PLC and the token-guarded actuator. Each run is checked
by vigil.chaos.checker over every leadership record and actuator write.

Three runs, each on one lab: the named schedules with leases only, the same
with IPMI fencing, and a time-boxed set of random schedules from fixed seeds
(bench/chaos.py runs many more).
"""

from __future__ import annotations


import pytest

from tests.system.netns import run_in_client, topology
from vigil.chaos.schedules import NAMED, TTL

RANDOM_SEED, RANDOM_COUNT = 20261127, 6  # about a minute


@pytest.fixture(scope="module")
def net():
    with topology(3) as topo:
        yield topo


def chaos(net, root, *args) -> dict:
    return run_in_client(net, "vigil.chaos.run", root, *args, timeout=600)


@pytest.fixture(scope="module")
def lease_run(net, tmp_path_factory):
    return chaos(net, tmp_path_factory.mktemp("lease"), "--schedule", ",".join(NAMED),
                 "--no-fence-devices")


@pytest.fixture(scope="module")
def fenced_run(net, tmp_path_factory):
    return chaos(net, tmp_path_factory.mktemp("fenced"), "--schedule", ",".join(NAMED))


def step(run: dict, schedule: str) -> dict:
    found = [s for s in run["steps"] if s["schedule"] == schedule]
    assert len(found) == 1 and "error" not in found[0], found
    return found[0]


@pytest.mark.parametrize("which", ["lease_run", "fenced_run"])
def test_named_schedules_pass_the_checker(which, request):
    run = request.getfixturevalue(which)
    assert run["verdict"]["ok"], run["verdict"]["violations"]
    assert {s["schedule"] for s in run["steps"]} == set(NAMED)
    stats = run["verdict"]["stats"]
    assert stats["acks"] > 0 and stats["writes_accepted"] >= stats["acks"]
    assert len(stats["tokens_accepted"]) >= 4, "leaders changed and every one of them wrote"


def test_cut_off_leader_steps_down_before_the_majority_elects_another(lease_run):
    s = step(lease_run, "leader_partitioned")
    assert s["old_stopped_claiming_s"] < s["takeover_s"], s
    assert s["node"] not in s["claims_at_end"] and len(s["claims_at_end"]) == 1
    assert s["after"][1] > s["before"][1]


def test_cut_off_leader_is_fenced_through_its_bmc_before_its_lease_expires(fenced_run):
    s = step(fenced_run, "leader_partitioned")
    assert s["takeover_s"] < TTL, s
    assert s["node"] not in s["claims_at_end"] and len(s["claims_at_end"]) == 1


def test_leader_frozen_for_two_ttls_does_not_lead_when_it_resumes(lease_run):
    s = step(lease_run, "leader_paused")
    assert s["hold"] == 2 * TTL and s["takeover_s"] is not None
    assert s["resumed_claims"] is False, "its first answer after SIGCONT is not 200"


def test_frozen_leader_is_powered_off_and_replaced_within_a_ttl(fenced_run):
    s = step(fenced_run, "leader_paused")
    assert s["takeover_s"] < TTL
    assert "resumed_claims" not in s, "SIGCONT found no process: the BMC had powered it off"


@pytest.mark.parametrize("which", ["lease_run", "fenced_run"])
def test_no_node_leads_while_every_node_is_cut_off_from_every_other(which, request):
    s = step(request.getfixturevalue(which), "split_all")
    assert s["claims_at_end"] == [], "without an etcd quorum nobody may act as leader"
    assert s["takeover_s"] is None and s["recovery_s"] is not None


@pytest.mark.parametrize("which", ["lease_run", "fenced_run"])
def test_a_cut_off_standby_leaves_the_leader_alone(which, request):
    s = step(request.getfixturevalue(which), "standby_partitioned")
    assert s["takeover_s"] is None and s["claims_at_end"] == [s["before"][0]], s
    assert s["after"] == s["before"]


@pytest.mark.parametrize("which", ["lease_run", "fenced_run"])
def test_etcd_leader_killed_during_a_switchover_leaves_one_leader(which, request):
    s = step(request.getfixturevalue(which), "etcd_leader_killed_in_switchover")
    assert len(s["claims_at_end"]) <= 1 and s["after"] is not None


@pytest.mark.parametrize("which", ["lease_run", "fenced_run"])
def test_twenty_percent_loss_on_the_leaders_links_keeps_a_leader(which, request):
    s = step(request.getfixturevalue(which), "leader_loss")
    assert s["percent"] == 20 and s["after"] is not None and len(s["claims_at_end"]) <= 1


def test_killed_leader_waits_for_its_lease_without_fencing_and_not_with_it(lease_run, fenced_run):
    lease, fenced = step(lease_run, "leader_killed"), step(fenced_run, "leader_killed")
    assert lease["takeover_s"] > 0.75 * TTL, "no fence: the dead leader's lease must run out"
    assert fenced["takeover_s"] < 0.75 * TTL, "fenced: taken over before the lease could expire"


def test_random_schedules_from_fixed_seeds_pass_the_checker(net, tmp_path):
    run = chaos(net, tmp_path / "random", "--random", str(RANDOM_COUNT), "--seed", str(RANDOM_SEED))
    assert run["verdict"]["ok"], run["verdict"]["violations"]
    assert len({s["schedule"] for s in run["steps"]}) == RANDOM_COUNT
    assert all(s["recovery_s"] is not None for s in run["steps"])
