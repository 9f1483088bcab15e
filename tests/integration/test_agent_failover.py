"""The agent against a real 3-member etcd, with real processes killed,
frozen and stopped."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from vigil.agent.history import read_records
from vigil.core.history import intervals
from vigil.identity import SigningKeys, generate
from vigil.net.wire import Heartbeat, encode
from vigil.testing.prometheus import Prometheus
from tests.integration.conftest import diagnose, leader_of


def vigil(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "vigil", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_one_leader_and_status_contract(lab):
    name, token = leader_of(lab)
    answers = {n.name: lab.is_leader(n.name) for n in lab.nodes}
    assert answers == {n.name: n.name == name for n in lab.nodes}
    r = vigil("status", "--json", "--lab", str(lab.root))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["leader"] == {"name": name, "token": token}
    rows = {m["name"]: m for m in doc["members"]}
    assert set(rows) == {"n1", "n2", "n3"}
    for m in rows.values():
        assert {"role", "state", "health", "heartbeat_age", "lease_ttl", "token"} <= set(m)
        assert m["health"] == "healthy" and m["lease_ttl"] is not None
        assert m["fencing"] == "none (lease only)"
    lab.wait_for(lambda: all(json.loads(vigil("status", "--json", "--lab", str(lab.root)).stdout)
                             ["members"][i]["heartbeat_age"] is not None for i in range(3)),
                 15, "heartbeat ages for every member")
    assert rows[name]["role"] == "leader" and rows[name]["token"] == token
    table = vigil("status", "--lab", str(lab.root)).stdout
    assert f"leader {name}, token {token}" in table and "HB age" in table


def test_sigkill_of_leader_gives_new_leader_with_higher_token(lab):
    old, token = leader_of(lab)
    lab.kill_agent(old)
    new, new_token = leader_of(lab, other_than=old, above=token)
    assert new_token > token
    lab.wait_for(lambda: all(old in (lab.agent_status(n.name) or {}).get("peers", {}) and
                             lab.agent_status(n.name)["peers"][old]["state"] == "suspect"
                             for n in lab.nodes if n.name != old), 10, "every peer to suspect the old leader")
    r = vigil("events", "--json", "--limit", "0", "--lab", str(lab.root))
    kinds = [(e["node"], e["kind"]) for e in json.loads(r.stdout)]
    assert (new, "leader_elected") in kinds
    assert sum(1 for node, k in kinds if k == "peer_suspected") >= 2
    lab.wait_for(lambda: json.loads(vigil("status", "--json", "--lab", str(lab.root)).stdout)
                 ["members"][int(old[1:]) - 1]["state"] == "failed", 10, "old leader marked failed")


def test_sigstop_longer_than_ttl_demotes_and_never_acts_on_old_token(lab):
    old, token = leader_of(lab)
    lab.signal_agent(old, signal.SIGSTOP)
    try:
        new, new_token = leader_of(lab, other_than=old, above=token)
    finally:
        lab.signal_agent(old, signal.SIGCONT)
    answers = []

    def answered():
        answers.append(lab.is_leader(old, timeout=2.0))
        return answers[-1] is not None
    lab.wait_for(answered, 10, "the resumed old leader to answer /leader")
    assert [a for a in answers if a is not None][0] is False, "its very first answer is 503"
    lab.wait_for(lambda: (lab.agent_status(old) or {}).get("role") == "follower", 10, "follower")
    recs = [r for r in read_records(lab.history_files()) if r["node"] == old and r["token"] == token]
    ends = [r for r in recs if r["event"] == "end"]
    assert ends and ends[0]["kind"] in ("demoted", "lost"), recs
    old_iv = next(i for i in intervals(read_records(lab.history_files())) if i.token == token)
    new_iv = next(i for i in intervals(read_records(lab.history_files())) if i.token == new_token)
    assert old_iv.end <= new_iv.start
    assert not any(r["event"] == "renew" and r["at"] > old_iv.end for r in recs)


def test_etcd_leader_sigkill_never_gives_two_leaders(lab):
    name, token = leader_of(lab)
    etcd_leader = lab.wait_for(lab.etcd.leader, 10, "an etcd raft leader")
    seen_two = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            leaders = [n.name for n in lab.nodes if lab.is_leader(n.name, timeout=1.0)]
            if len(leaders) > 1:
                seen_two.append(leaders)
    t = threading.Thread(target=watch)
    t.start()
    try:
        lab.etcd.kill(etcd_leader)
        lab.wait_for(lambda: lab.etcd.leader() not in (None, etcd_leader), 15, "a new etcd leader")
        leader_of(lab)
        lab.wait_for(lambda: sum(bool(lab.is_leader(n.name)) for n in lab.nodes) == 1, 15,
                     "exactly one agent leading after the etcd failover")
    finally:
        stop.set()
        t.join()
        lab.etcd.start(etcd_leader)
    assert seen_two == []


def test_etcd_frozen_whole_is_named_alerted_and_outlived(lab):
    """Every etcd member frozen (SIGSTOP) at once: the leader gives its role up (it can
    no longer prove its lease: vigil.agent.leadership); `vigil diagnose` says etcd does not
    answer, first; VigilEtcdUnreachable goes pending on a real Prometheus. Thawed, a
    leader is elected again and nothing is left pending or firing. The fixture checks
    that leadership never overlapped."""
    leader_of(lab)
    prometheus = Prometheus.for_lab(lab)
    members = [m.name for m in lab.etcd.members]
    try:
        lab.wait_for(prometheus.ready, 30, "Prometheus scraping every agent")
        try:
            for name in members:
                lab.etcd.kill(name, signal.SIGSTOP)
            lab.wait_for(lambda: all(lab.is_leader(n.name, timeout=1.0) is False for n in lab.nodes), 15,
                         "every agent saying it does not lead while etcd is frozen")
            found = diagnose(lab)
            assert found[0]["symptom"] == "etcd does not answer: no status, no leader can be read", found[:2]
            assert "etcdctl endpoint health" in found[0]["fix"]
            lab.wait_for(lambda: "VigilEtcdUnreachable" in prometheus.names("pending"), 20,
                         "VigilEtcdUnreachable pending")
        finally:
            for name in members:
                lab.etcd.kill(name, signal.SIGCONT)
        leader_of(lab)
        lab.wait_for(lambda: not prometheus.alerts("pending") and not prometheus.alerts(), 30,
                     "nothing pending or firing once etcd is back")
    finally:
        prometheus.stop()


def test_graceful_stop_hands_over_without_waiting_for_ttl(lab):
    old, token = leader_of(lab)
    t0 = time.monotonic()
    lab.signal_agent(old, signal.SIGTERM)
    leader_of(lab, other_than=old, above=token)
    handover = time.monotonic() - t0
    # Waiting for the lease would take at least 2/3 of the 2 s TTL; a resign takes tens of ms.
    assert handover < 1.0, f"handover took {handover:.2f} s"
    recs = [r for r in read_records(lab.history_files()) if r["node"] == old and r["event"] == "end"]
    assert recs and recs[-1]["kind"] == "resigned" and recs[-1]["reason"] == "graceful stop"


def test_switchover_moves_leadership_on_purpose(lab):
    old, token = leader_of(lab)
    target = next(n.name for n in lab.nodes if n.name != old)
    r = vigil("switchover", "--to", target, "--lab", str(lab.root))
    assert r.returncode == 0, r.stderr
    new, new_token = leader_of(lab, other_than=old, above=token)
    assert new == target
    bad = vigil("switchover", "--to", "nope", "--lab", str(lab.root))
    assert bad.returncode == 1 and "no such registered member" in bad.stderr


def test_forged_and_random_packets_to_a_live_agent_are_counted(lab):
    node = lab.nodes[0]
    before = lab.agent_status(node.name)["heartbeat"]["received"]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(50):
        s.sendto(b"VGHB\x01" + bytes(range(i % 60)) * 3, ("127.0.0.1", node.heartbeat_port))
    s.close()
    def counted():
        got = lab.agent_status(node.name)["heartbeat"]["received"]
        rejected = sum(v for k, v in got.items() if k not in ("accepted", "duplicate"))
        return rejected - sum(v for k, v in before.items() if k not in ("accepted", "duplicate")) >= 50
    lab.wait_for(counted, 10, "50 rejected packets counted")
    assert lab.agent_status(node.name)["peers"]["n2"]["state"] == "alive"
    metrics = __import__("urllib.request").request.urlopen(node.api_url + "/metrics").read().decode()
    assert "vigil_heartbeats_received_total" in metrics and "vigil_leader" in metrics


def test_a_heartbeat_under_a_key_the_ring_lacks_is_an_alert_not_a_suspicion(lab):
    """A node that signs with a key its peers' rings lack (a rotation done on one side
    only): its packets are refused as unknown_key and VigilKeyRingMismatch goes pending
    (it fires after 2 minutes) on a real Prometheus, for that receiver only."""
    node = lab.nodes[0]
    prometheus = Prometheus.for_lab(lab)
    try:
        lab.wait_for(prometheus.ready, 30, "Prometheus scraping every agent")
        assert prometheus.alerts("pending") == [] and prometheus.names() == set(), "a healthy lab: no alert"
        # n2's own incarnation and sequence numbers past its own: packets that pass the
        # replay guard and reach verification, under a key no ring holds.
        stranger = SigningKeys("n2", 77, {77: generate()})
        incarnation = int((Path(lab.node("n2").data_dir) / "incarnation").read_text())
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for seq in range(20):
                hb = Heartbeat(lab.cluster, "n2", incarnation, 2**62 + seq, int(time.time() * 1e6), "healthy",
                               "standby", ())
                s.sendto(encode(hb, stranger), ("127.0.0.1", node.heartbeat_port))

        def refused() -> dict[str, int]:
            got = lab.agent_status(node.name)["heartbeat"]["received"]
            return {k: got.get(k, 0) for k in ("unknown_key", "rate_limited")}
        # The source's verification budget takes a few, and counts the rest unverified.
        got = lab.wait_for(lambda: (lambda r: r if sum(r.values()) >= 20 else None)(refused()), 10,
                           "20 packets refused")
        assert got["unknown_key"] >= 1, got
        pending = lab.wait_for(lambda: prometheus.pending("VigilKeyRingMismatch"), 15, "VigilKeyRingMismatch pending")
        assert {a["node"] for a in pending} == {node.name} and prometheus.names() == set(), pending
        assert lab.agent_status(node.name)["peers"]["n2"]["state"] == "alive", "n2 itself is still heard"
    finally:
        prometheus.stop()
