"""vigil.agent.release: the nftables hold and the count of connections to a VIP,
on this machine's real /proc/net/tcp and a real socket."""

from __future__ import annotations

import socket
import subprocess
import shutil

from vigil.agent.release import TABLE, established, hold_rules


def test_the_hold_drops_only_new_connections_to_the_vips():
    rules = hold_rules(["10.231.0.100", "fd00::100"])
    assert f"table inet {TABLE}" in rules and "priority -200" in rules
    assert "ip daddr { 10.231.0.100 } tcp flags & (syn | ack) == syn drop" in rules
    assert "ip6 daddr { fd00::100 } tcp flags & (syn | ack) == syn drop" in rules
    nft = shutil.which("nft")
    assert nft, "nft is missing: apt-get install nftables (scripts/install.sh does)"
    r = subprocess.run([nft, "-c", "-f", "-"], input=rules, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr  # nft -c: checked by nft itself, nothing loaded


def test_established_counts_the_connections_to_an_address():
    server = socket.create_server(("127.0.0.9", 0))
    port = server.getsockname()[1]
    before = established(["127.0.0.9"])
    clients = [socket.create_connection(("127.0.0.9", port)) for _ in range(3)]
    accepted = [server.accept()[0] for _ in clients]
    try:
        assert established(["127.0.0.9"]) == before + 3  # the server's ends: local address 127.0.0.9
        assert established(["127.0.0.10"]) == 0
    finally:
        for s in clients + accepted + [server]:
            s.close()
