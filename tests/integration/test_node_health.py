"""Issue 12 on a real lab: the compatibility gate keeps a node whose CUDA
differs from the workload's requirement out of every role and every request
(and `vigil check compat` names it); an operator's standby, drain and resume
move the role and the traffic with zero failed requests."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from vigil.lab import Lab
from vigil.lab.load import LoadGenerator
from vigil.testing.prometheus import Prometheus
from tests.integration.conftest import diagnose, leader_of


def vigil(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True,
                          timeout=timeout)


def member(lab: Lab, name: str) -> dict:
    """`name`'s entry in `vigil status` ({} while it has neither a record nor a state)."""
    return next((m for m in lab.status()["members"] if m["name"] == name), {})


@pytest.fixture
def mixed_cuda_lab(tmp_path):
    """n1 (the highest priority) declares CUDA 12.2; the workload needs 12.1
    (`vigil lab up --require cuda_driver===12.1 --declare n1:cuda_driver=12.2 ...`)."""
    lab = Lab.up(tmp_path / "lab", 3, workload={
        "requires": {"cuda_driver": "==12.1"},
        "declare": {"n1": {"cuda_driver": "12.2"}, "n2": {"cuda_driver": "12.1"}, "n3": {"cuda_driver": "12.1"}}})
    try:
        yield lab
    finally:
        lab.down()


def test_an_incompatible_node_never_leads_and_check_compat_names_it(mixed_cuda_lab):
    lab = mixed_cuda_lab
    leader, token = leader_of(lab)
    assert leader != "n1", "n1 has the highest priority but cannot run the workload"
    n1 = lab.wait_for(lambda: member(lab, "n1") if member(lab, "n1").get("verdict") == "draining" else None,
                      10, "n1's verdict published")
    assert any("cuda_driver: 12.2, required ==12.1" in r for r in n1["reasons"]), n1["reasons"]
    assert n1["fingerprint"]["cuda_driver"] == "12.2" and n1["fingerprint"]["declared"] == ["cuda_driver"]
    assert n1["fingerprint"]["gpu"].startswith("no GPU"), "the lab has no GPU and says so"
    r = vigil("check", "compat", "--lab", str(lab.root))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "n1: cuda_driver: 12.2, required ==12.1 - failover to n1 would fail" in r.stdout
    assert "cuda_driver differs: n1: 12.2, n2/n3: 12.1" in r.stdout
    report = json.loads(vigil("check", "compat", "--lab", str(lab.root), "--json").stdout)
    assert set(report["mismatches"]) == {"n1"} and report["requires"] == {"cuda_driver": "==12.1"}
    text = vigil("status", "--lab", str(lab.root)).stdout
    assert "failover to n1 would fail" in text
    other = ({"n2", "n3"} - {leader}).pop()
    lab.kill_agent(leader)  # the failover goes to the other compatible node, never to n1
    assert leader_of(lab, other_than=leader, above=token)[0] == other


@pytest.fixture(scope="module")
def served_lab(tmp_path_factory):
    lab = Lab.up(tmp_path_factory.mktemp("standby") / "lab", 3, model=True, router=True)
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def prometheus(served_lab):
    """A real Prometheus with Vigil's rules scraping the served lab's agents."""
    prometheus = Prometheus.for_lab(served_lab)
    try:
        served_lab.wait_for(prometheus.ready, 30, "Prometheus scraping every agent")
        yield prometheus
    finally:
        prometheus.stop()


def pending_for(prometheus: Prometheus, alert: str) -> set[str]:
    """The nodes `alert` is pending for (its expression holds; `for` not yet over)."""
    return {labels.get("node", "") for labels in prometheus.pending(alert)}


def test_standby_drain_and_resume_move_roles_and_traffic_with_zero_failed_requests(served_lab):
    lab = served_lab
    leader, token = leader_of(lab)
    load = LoadGenerator(lab.router.url + "/v1/embeddings", rate=25, concurrency=16)

    def operate() -> dict:
        r = vigil("standby", leader, "--lab", str(lab.root), "--reason", "replace a fan")
        assert r.returncode == 0, r.stderr
        t_standby = time.time()
        new, _ = leader_of(lab, other_than=leader, above=token)
        lab.wait_for(lambda: time.time() - t_standby > 3, 10, "3 s of traffic after the standby")
        r = vigil("drain", new, "--lab", str(lab.root), "--wait", "--timeout", "60", "--reason", "firmware")
        assert r.returncode == 0, r.stdout + r.stderr
        assert lab.leader()[0] not in (leader, new), "the drained node holds no role"
        t_drained = time.time()
        t_resuming = time.time()
        for node in (leader, new):
            assert vigil("resume", node, "--lab", str(lab.root)).returncode == 0
        t_resumed = time.time()
        lab.wait_for(lambda: time.time() - t_resumed > 4, 10, "4 s of traffic after the resume")
        return {"standby": t_standby, "drained": t_drained, "resuming": t_resuming, "resumed": t_resumed,
                "new": new}

    async def run():
        task = asyncio.get_running_loop().create_task(load.run(600))
        marks = await asyncio.to_thread(operate)
        load.stop()
        return marks, await task

    marks, samples = asyncio.run(run())
    failed = [s for s in samples if s.status != 200]
    assert len(samples) > 100 and not failed, failed[:5]
    # A request sent 1 s after the standby (the router has read the state by then) never reaches it.
    late = [s for s in samples if marks["standby"] + 1 < s.start < marks["resuming"]]
    assert late and leader not in {s.node for s in late}, {s.node for s in late}
    assert marks["new"] not in {s.node for s in samples if marks["drained"] < s.start < marks["resuming"]}
    back = {s.node for s in samples if s.start > marks["resumed"] + 2}
    assert leader in back, f"the resumed {leader} serves again ({back})"
    kinds = [(e["kind"], e.get("subject"), e.get("reason")) for e in lab.events()]
    assert ("node_standby", leader, "replace a fan") in kinds and ("node_drain", marks["new"], "firmware") in kinds
    assert ("node_resume", leader, "") in kinds
    assert {member(lab, n.name)["state"] for n in lab.nodes} <= {"active", "standby"}
    print(f"standby/drain/resume under load: {len(samples)} requests, {len(failed)} failed")


def verdict_events(lab: Lab, node: str, since: float) -> list[dict]:
    return [e for e in lab.events() if e["kind"] == "health_verdict" and e["node"] == node and e["at"] >= since]


def test_a_warming_rack_drains_its_node_before_the_limit_and_sensor_faults_only_alarm(served_lab, prometheus):
    lab = served_lab
    load = LoadGenerator(lab.router.url + "/v1/embeddings", rate=25, concurrency=16)
    start_temp, ramp, limit = 26.0, 0.15, 32.0  # the lab's inlet limit; drain time 10 s + 10 s margin

    def operate() -> dict:
        t0 = time.time()
        assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n1", "--inlet-temp", str(start_temp),
                     "--ramp", str(ramp)).returncode == 0
        crossing = time.time() + (limit - start_temp) / ramp  # the ramp started before the command returned
        drained = lab.wait_for(lambda: [e for e in verdict_events(lab, "n1", t0) if e["verdict"] == "draining"],
                               60, "n1 drained by its inlet trend")[0]
        lab.wait_for(lambda: time.time() - drained["at"] > 3, 10, "3 s of traffic after the drain")
        found = diagnose(lab)
        assert found[0]["symptom"] == "n1 is draining for heat" and "cooling" in found[0]["fix"], found[:2]
        assert lab.wait_for(lambda: pending_for(prometheus, "VigilNodeDraining"), 15,
                            "VigilNodeDraining pending") == {"n1"}
        assert prometheus.names() == set(), "a drain has 10 minutes to end before it alerts"
        # A sensor fault on n2 is an alarm only; a PLC fault code on n3 drains it.
        assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n2", "--current-ma", "2.0").returncode == 0
        alarm = lab.wait_for(lambda: [e for e in lab.events() if e["kind"] == "health_alarm" and e["node"] == "n2"
                                      and e["at"] >= t0], 15, "n2's sensor-fault alarm")[0]
        assert "sensor fault" in alarm["cause"]
        assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n1", "--inlet-temp", "24").returncode == 0
        lab.wait_for(lambda: member(lab, "n1").get("verdict") == "ready", 60, "n1 ready again once the rack cools")
        t_back = time.time()
        lab.wait_for(lambda: time.time() - t_back > 3, 10, "3 s of traffic after n1 came back")
        return {"t0": t0, "crossing": crossing, "drained": drained["at"], "n2": member(lab, "n2")["verdict"],
                "alarm": alarm["at"], "back": t_back}

    async def run():
        task = asyncio.get_running_loop().create_task(load.run(600))
        marks = await asyncio.to_thread(operate)
        load.stop()
        return marks, await task

    try:
        marks, samples = asyncio.run(run())
    finally:
        vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n2", "--inlet-temp", "24")
        vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n1", "--inlet-temp", "24")
    lead = marks["crossing"] - marks["drained"]
    assert lead >= 10.0, f"drained {lead:.1f} s before the limit; draining takes 10 s"
    failed = [s for s in samples if s.status != 200]
    assert len(samples) > 100 and not failed, failed[:5]
    while_drained = {s.node for s in samples if marks["drained"] + 1 < s.start < marks["back"] - 1}
    assert while_drained and "n1" not in while_drained, while_drained
    assert "n2" in while_drained and marks["n2"] == "ready", "a broken sensor wire moves nothing"
    assert "n1" in {s.node for s in samples if s.start > marks["back"]}
    print(f"thermal drain: n1 drained {lead:.1f} s before its inlet would reach {limit} °C "
          f"({ramp} °C/s from {start_temp}); {len(samples)} requests, {len(failed)} failed")


def test_a_plc_fault_code_drains_and_clearing_it_readmits(served_lab, prometheus):
    lab = served_lab
    t0 = time.time()
    assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n3", "--fault-code", "0x88").returncode == 0
    try:
        lab.wait_for(lambda: member(lab, "n3").get("verdict") == "draining", 15, "n3 draining on the fault code")
        assert any("0x88 (power imbalance)" in r for r in member(lab, "n3")["reasons"])
        d = vigil("diagnose", "--lab", str(lab.root), "--json", "--kernel-log", "/dev/null")
        top = json.loads(d.stdout)["findings"][0]
        assert top["symptom"] == "n3 is draining: the facility's PLC reports fault code 0x88 (power imbalance)", top
        assert d.returncode == 1 and "PLC clears the code" in top["fix"]
        assert lab.wait_for(lambda: pending_for(prometheus, "VigilNodeDraining"), 15,
                            "VigilNodeDraining pending") == {"n3"}
        # The same code on n2 while n3 is out: the drain budget (a third of 3 nodes) is full,
        # so n2 serves on, degraded, and says why; the budget's alert goes pending (1 min).
        assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n2", "--fault-code", "0x88").returncode == 0
        lab.wait_for(lambda: (member(lab, "n2").get("reasons") or [""])[0].startswith("drain deferred"), 15,
                     "n2's drain deferred by the drain budget")
        lab.wait_for(lambda: "VigilDrainBudgetExhausted" in prometheus.names("pending"), 15,
                     "VigilDrainBudgetExhausted pending")
        found = {f["symptom"]: f for f in diagnose(lab)}
        budget = found.get("the drain budget is full: 1 node(s) wait to drain for health")
        assert budget and "n2" in budget["cause"] and member(lab, "n2")["verdict"] == "degraded", found.keys()
        assert prometheus.names() == set()
    finally:
        assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n2", "--fault-code", "0").returncode == 0
        assert vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n3", "--fault-code", "0").returncode == 0
    lab.wait_for(lambda: member(lab, "n3").get("verdict") == "ready" and member(lab, "n2").get("verdict") == "ready",
                 15, "n3 and n2 ready once the faults clear")
    lab.wait_for(lambda: not prometheus.alerts("pending") and not prometheus.alerts(), 15,
                 "no alert pending once the fault cleared")
    seen = verdict_events(lab, "n3", t0)
    assert [e["verdict"] for e in seen] == ["degraded", "draining", "ready"], seen
    assert seen[0]["reasons"][0].startswith("drain deferred by the drain budget"), \
        "a drain says so first (drain budget), then takes its place"
    r = vigil("lab", "sensor", "--dir", str(lab.root), "--node", "n9", "--fault-code", "1")
    assert r.returncode == 2 and "--node" in r.stderr, "a bad argument names itself"


def test_an_xid_in_the_leaders_kernel_log_moves_its_role_and_diagnose_names_it(lab):
    """The troubleshooting matrix's `dmesg | grep -i nv` row, on a lab: the NVIDIA
    driver's line for a GPU that fell off the bus (XID 79) lands in the leader's
    kernel log; its verdict turns failed and its role moves; `vigil diagnose`
    names the XID first, with the kernel line and the fix; VigilNodeFailed goes
    pending (it fires after a minute) on a real Prometheus, and nothing fires."""
    leader, token = leader_of(lab)
    prometheus = Prometheus.for_lab(lab)
    try:
        lab.wait_for(prometheus.ready, 30, "Prometheus scraping every agent")
        assert prometheus.names() == set() and prometheus.alerts("pending") == [], "a healthy lab: no alert"
        lab.log_kernel(leader, "NVRM: Xid (PCI:0000:3b:00): 79, pid=2412, name=python3, "
                               "GPU has fallen off the bus.")
        lab.wait_for(lambda: member(lab, leader).get("verdict") == "failed", 15, f"{leader} failed by its XID")
        leader_of(lab, other_than=leader, above=token)
        found = diagnose(lab, kernel_log=str(lab.kernel_log(leader)))
        assert found[0]["symptom"] == f"{leader} is failed: XID 79 on GPU 0000:3b:00", found[:2]
        assert f"reboot {leader}" in found[0]["fix"] and any("NVRM: Xid" in x for x in found[0]["evidence"])
        assert lab.wait_for(lambda: pending_for(prometheus, "VigilNodeFailed"), 15,
                            "VigilNodeFailed pending") == {leader}
        assert prometheus.names() == set()
    finally:
        prometheus.stop()
    assert all(member(lab, n.name).get("verdict") == "ready" for n in lab.nodes if n.name != leader), \
        "each node follows a kernel log of its own"


@pytest.fixture
def damped_lab(tmp_path):
    """Flap damping at the product's defaults (labs turn it off: they kill on purpose)."""
    lab = Lab.up(tmp_path / "lab", 3, workload={"flap_threshold": 3})
    try:
        yield lab
    finally:
        lab.down()


def test_a_flapping_node_is_held_out_until_an_operator_resumes_it(damped_lab):
    """Pacemaker's migration-threshold: three failures within the window (the
    defaults: 3 in 600 s) hold the node out; `vigil resume` puts it back."""
    lab = damped_lab
    leader, _ = leader_of(lab)
    flapper = next(n.name for n in lab.nodes if n.name != leader)

    def state() -> str:
        return member(lab, flapper).get("state", "")

    for i in range(3):
        lab.wait_for(lambda: state() in ("standby", "held"), 20, f"{flapper} back (round {i})")
        lab.kill_agent(flapper)
        lab.wait_for(lambda: state() == "failed", 20, f"{flapper} marked failed (round {i})")
        lab.start_agent(flapper)
    lab.wait_for(lambda: state() == "held", 20, f"{flapper} held out after 3 failures")
    lab.wait_events(lambda e: e["kind"] == "state_changed" and e.get("subject") == flapper
                    and e.get("state") == "held" and "failed 3 times in 600 s" in e["cause"], 10,
                    f"the event holding {flapper}: failed 3 times in 600 s")
    found = diagnose(lab)
    assert found[0]["symptom"] == f"{flapper} is held out (flap damping)", found[:2]
    assert f"vigil resume {flapper}" in found[0]["fix"]
    prometheus = Prometheus.for_lab(lab)
    try:
        assert lab.wait_for(lambda: pending_for(prometheus, "VigilNodeHeld"), 30,
                            "VigilNodeHeld pending") == {flapper}
        assert prometheus.names() == set(), "a hold alerts after a minute"
    finally:
        prometheus.stop()
    lab.kill_agent(leader)  # a failover while it is held goes elsewhere
    new, _ = leader_of(lab, other_than=leader)
    assert new != flapper
    lab.start_agent(leader)
    lab.wait_for(lambda: member(lab, leader).get("state") == "standby", 20, f"{leader} back under {new}")
    assert state() == "held", "the new leader keeps the hold (held/<node> in etcd)"
    r = vigil("resume", flapper, "--lab", str(lab.root), "--reason", "fixed the NIC")
    assert r.returncode == 0, r.stderr
    lab.wait_for(lambda: state() == "standby", 20, f"{flapper} back in service after resume")


@pytest.mark.parametrize("flag,value,words", [
    ("--declare", "n9:cuda_driver=12.2", "nodes are n1..n3"), ("--declare", "cuda_driver=12.2", "NODE:KEY=VALUE"),
    ("--require", "cuda_driver", "KEY=COND"), ("--require", "cuda=>=12", "unknown")])
def test_lab_workload_flags_refuse_bad_input(tmp_path, flag, value, words):
    r = vigil("lab", "up", "--no-model", "--dir", str(tmp_path / "lab"), flag, value)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert not (tmp_path / "lab" / "lab.json").exists(), "nothing was started"

