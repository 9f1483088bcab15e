"""Scale test (root; `bash scripts/test.sh --scale`, left out of the default run
by name, like tests/generative: about a minute for 30 agents on 2 cores, kept
out of the default run's 25-minute budget): 30 agents, one per network namespace, in
three failure domains of ten; one rack (10 nodes) cut off from the rest at once. The leader
must see one event for the rack, mark its ten nodes failed and keep leading;
no node outside the rack may suspect another outside it, and nothing is fenced
(rack_cut_run.py does the work in the client namespace)."""

from __future__ import annotations

import pytest

from tests.system.netns import run_in_client, topology

RACK = {f"n{i}" for i in range(21, 31)}
OUTSIDE = {f"n{i}" for i in range(1, 21)}


@pytest.mark.timeout(1200)
def test_a_rack_cut_off_at_once_is_one_event_and_costs_nothing_outside_it(tmp_path):
    with topology(30) as net:
        run = run_in_client(net, "tests.system.rack_cut_run", tmp_path / "lab", timeout=1100)
    events = run["events"]
    # Everyone hears the leader and its mesh and observers only, never all 29 others.
    assert max(run["peers_watched"].values()) < 29, run["peers_watched"]
    lost = [e for e in events if e["kind"] == "domain_lost"]
    assert len(lost) == 1 and lost[0]["subject"] == "rack-3" and set(lost[0]["nodes"]) == RACK, lost
    assert (run["leader_after"], run["token_after"]) == (run["leader_before"], run["token_before"])
    assert {n for n, s in run["states_after_cut"].items() if s == "failed"} == RACK
    wrong = [e for e in events if e["kind"] == "peer_suspected" and e["node"] in OUTSIDE
             and e["peer"] in OUTSIDE]
    assert not wrong, f"a node outside the cut suspected another outside it: {wrong}"
    assert not [e for e in events if "fenc" in e["kind"]], "nothing may be fenced"
    assert not [e for e in events if e["kind"] in ("leader_elected", "leadership_acquired")
                and e["node"] in RACK]
    assert not [e for e in run["events_after_heal"] if e["kind"] == "domain_lost"]
