"""Issue 10, system test: the leader's VIP in front of a router on every node,
in network namespaces. A client streams requests to http://VIP:PORT.
`vigil lab kill` of the holder (agent, router, model server), SIGKILL of the
holder's agent alone, SIGSTOP of it for 2 x TTL and a partition that
isolates the holder never leave two namespaces holding the address or two
MACs answering ARP for it; each time another node takes it over, the stream
resumes and is answered by the new holder's router, and after the heal the
client's ARP cache points at the holder (re-announced). An address another
host holds is never taken, and `vigil diagnose` names it."""

from __future__ import annotations

import json

import pytest

from tests.system.netns import run_in_client, topology


@pytest.fixture
def net():
    with topology(3) as topo:
        yield topo


def test_never_two_holders_and_the_client_follows(net, tmp_path):
    out = run_in_client(net, "tests.system.vip_run", tmp_path / "lab", timeout=500)
    print("vip:", json.dumps(out))
    assert out["max_holders"] == 1 and out["max_arp_answers"] == 1, out
    assert out["samples"] > 100
    assert out["answered"] > 200, out
    for fault in ("kill_node", "kill_agent", "stop_agent", "partition"):
        f = out[fault]
        assert f["new"] != f["old"] and f["gone_s"] <= f["new_holder_s"], f
        assert f["answering_after"] == [f["holder_mac"]] and f["client_cache"] == f["holder_mac"], f
        # After the move the VIP's requests are answered by the holder's own router, and only by it.
        assert f["routers_after"] == [f["holder_router"]], f
        assert f["resumed_s"] is not None and f["resumed_s"] < 10.0, f
    f = out["foreign_holder"]  # the matrix's "Resource Start Fail": named first by `vigil diagnose`
    assert f["symptom"] == f"VIP 10.231.0.200/24 on eth0 does not start on {f['to']}", f
    assert "arping -D -I eth0 10.231.0.200" in f["fix"] and f["exit"] == 1 and f["holders_while"] == [], f
    # The kernel lease: a SIGKILLed or frozen holder's address is gone by its
    # self-demotion deadline (keep-alive + 1.6 s), before the 2 s lease lets anyone in.
    assert out["kill_agent"]["gone_s"] < 2.0 and out["stop_agent"]["gone_s"] < 2.0, out
