"""`vigil plan` (vigil.core.plan, vigil.cli.plan_cmd): voters, topology, load, checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.core.plan import Costs, check, layout, plan, voters
from vigil.core.topology import TopologySettings


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 400), st.integers(1, 40))
def test_voters_are_odd_few_and_spread_over_the_domains(n, d):
    members = layout(n, min(d, n))
    v = voters(members)
    assert len(v) % 2 == 1 and len(v) <= 5 and len(set(v)) == len(v) and set(v) <= set(members)
    domains = {members[m] for m in v}
    assert len(domains) == min(len(v), len(set(members.values())))  # one per domain while they last


def test_the_load_per_node_stays_flat_from_30_to_1000_nodes():
    costs = Costs(verify_us=100, send_us=60)
    small = plan(layout(30, 3), TopologySettings(), costs)["per_node"]
    large = plan(layout(1000, 100), TopologySettings(), costs)["per_node"]
    assert large["rx_packets_s_max"] <= 1.5 * small["rx_packets_s_max"]
    full = plan(layout(1000, 100), TopologySettings(full_mesh_up_to=1000, domain_mesh_up_to=16), costs)
    assert full["per_node"]["rx_packets_s_mean"] == pytest.approx(999 * 20)  # what it was before
    assert large["rx_packets_s_mean"] < full["per_node"]["rx_packets_s_mean"] / 40


def test_check_names_every_disagreement_and_its_fix():
    configured = layout(40, 2)  # two domains of 20: over domain_mesh_up_to
    findings = check(configured, set(configured) - {"node-0003"} | {"stranger"}, 4, TopologySettings())
    levels = {(lv, p.split(" ")[0]) for lv, p, _ in findings}
    assert ("ERROR", "etcd") in levels  # 4 voters
    assert ("ERROR", "stranger") in levels and ("WARN", "node-0003") in levels
    assert any("failure domain rack-1 has 20 members" in p for _, p, _ in findings)
    assert all(fix for _, _, fix in findings)
    assert check(layout(3, 1), set(layout(3, 1)), 3, TopologySettings()) == []


def vigil(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True, timeout=60)


def test_the_command_prints_a_plan_and_refuses_bad_arguments():
    r = vigil("plan", "--nodes", "300", "--domains", "30", "--json", "--show-observers")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["etcd_voters"]) == 5 and len(doc["observers"]) == 300
    assert all(len(o) == 8 for o in doc["observers"].values())
    for bad, field in ((["--nodes", "0"], "--nodes"), (["--nodes", "5", "--domains", "9"], "--domains"),
                       (["--nodes", "50", "--agreement", "9"], "--agreement")):
        r = vigil("plan", *bad)
        assert r.returncode == 2 and field in r.stderr, (bad, r.stderr)
