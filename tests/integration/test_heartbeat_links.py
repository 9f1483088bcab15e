"""Two real UDP heartbeat services on two loopback links (127.0.0.1 and
127.0.0.2): a peer stays alive while either link delivers, and is suspected
once both are gone."""

from __future__ import annotations

from vigil.agent.heartbeat import HeartbeatService
from vigil.clock import SystemClock
from vigil.config import parse_config
from vigil.procs import free_ports
from vigil.testing.wait import wait_until
from vigil.testing.keys import shared_keys

KEYS = shared_keys('a', 'b')


def node_cfg(me, peer, my_port, peer_port):
    return parse_config({
        "cluster": "links", "node": me, "etcd": {"endpoints": ["http://127.0.0.1:1"]},
        "heartbeat": {**KEYS[me], "addresses": ["127.0.0.1", "127.0.0.2"], "port": my_port,
                      "peers": [{"name": peer, "addresses": ["127.0.0.1", "127.0.0.2"], "port": peer_port}]}})


async def test_peer_alive_while_either_link_delivers():
    pa, pb = free_ports(2)
    transitions = []
    a = HeartbeatService(node_cfg("a", "b", pa, pb), SystemClock(), 1, lambda c: None,
                         lambda: ("healthy", "standby"))
    b = HeartbeatService(node_cfg("b", "a", pb, pa), SystemClock(), 1, transitions.extend,
                         lambda: ("healthy", "standby"))
    await a.start()
    await b.start()
    try:
        peer = b.peers.peers["a"]
        await wait_until(lambda: peer.state == "alive" and len(peer.links) == 2, 5, "both links up")
        assert b.receiver.counters["duplicate"] > 0, "the second copy proves the second link"
        # Cut link 1: b's interface on 127.0.0.1 goes away, so the kernel drops every
        # packet a sends on that link; link 2 (127.0.0.2 -> 127.0.0.2) carries on.
        b.transport._transports[0].close()
        cut = peer.links["127.0.0.1"]
        accepted = b.receiver.counters["accepted"]
        await wait_until(lambda: b.receiver.counters["accepted"] >= accepted + 30, 10,
                         "30 more heartbeats on the surviving link")
        assert peer.links["127.0.0.1"] == cut and peer.links["127.0.0.2"] > cut
        assert [t.new for t in transitions] == ["alive"], "never suspected while one link worked"
        await a.stop()  # both links gone
        await wait_until(lambda: peer.state == "suspect", 5, "suspicion after both links died")
        assert transitions[-1].new == "suspect" and transitions[-1].phi >= 8
    finally:
        await a.stop()
        await b.stop()
