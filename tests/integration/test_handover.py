"""The handover barrier: a node that wins the leader key does not act while a
live peer still announces itself leader in its heartbeats (what etcd before
3.4.28 / 3.5.11 can cause by revoking a renewed lease after a raft leader
stall). An impostor with the cluster key stands in for such a peer."""

from __future__ import annotations

import signal
import socket
import threading
import time

from vigil.agent.history import read_records
from vigil.identity import load_signing_keys
from vigil.net.wire import Heartbeat, encode
from tests.integration.conftest import leader_of


def test_a_new_leader_waits_while_a_live_peer_still_claims_leadership(lab):
    leader, token = leader_of(lab)
    impostor, survivor = [n.name for n in lab.nodes if n.name != leader]
    lab.kill_agent(impostor)
    key = load_signing_keys(lab.root / "keys" / f"{impostor}.key", "impostor")  # stolen from the dead node
    targets = [(n.host, n.heartbeat_port) for n in lab.nodes if n.name != impostor]
    role, stop = {"now": "leader"}, threading.Event()
    incarnation = int(time.time() * 1e6) + 10**9  # newer than the real node's (a start time in µs)

    def announce() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            seq = 0
            while not stop.wait(0.05):
                seq += 1
                packet = encode(Heartbeat(lab.cluster, impostor, incarnation, seq, int(time.time() * 1e6),
                                          "healthy", role["now"]), key)
                for t in targets:
                    s.sendto(packet, t)

    sender = threading.Thread(target=announce, daemon=True)
    sender.start()
    try:
        lab.wait_for(lambda: (lab.agent_status(survivor) or {}).get("peers", {}).get(impostor, {})
                     .get("incarnation") == incarnation, 10, f"{survivor} to hear the impostor")
        lab.wait_for(lambda: lab.agent_status(survivor)["peers"][impostor]["state"] == "alive", 10,
                     f"{survivor} to hold the impostor alive")
        lab.signal_agent(leader, signal.SIGKILL)
        lab.wait_for(lambda: (lab.leader() or ("",))[0] == survivor, 15, f"{survivor} to win the key")
        assert lab.is_leader(survivor) is False, "it holds the key but does not act yet"
        released = time.time()
        role["now"] = "standby"
        lab.wait_for(lambda: lab.is_leader(survivor), 10, f"{survivor} to act once the claim ends")
    finally:
        stop.set()
        sender.join()
    starts = [r for r in read_records(lab.history_files())
              if r["node"] == survivor and r["event"] == "start" and r["token"] > token]
    assert starts and starts[0]["at"] >= released
    waits = lab.wait_events(lambda e: e["kind"] == "handover_wait" and e["node"] == survivor, 10,
                            f"{survivor}'s handover_wait event")
    assert impostor in waits[0]["cause"]
