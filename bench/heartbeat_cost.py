"""What one heartbeat costs its receiver and its sender, in-process, before
(Ed25519: wire version 2, signed once, verified by every receiver) and after
(pair keys: wire version 4, one HMAC per receiver), on this machine.

Receive: HeartbeatReceiver.receive of the first copy (parse, cheap checks,
verification, replay window) and of the second copy (a duplicate). Send:
what HeartbeatTransport.send spends making the packets for 18 peers (a node
of a 300-node cluster in racks of ten: 9 in its mesh, 8 observers, the
leader), without the sendto calls, which are the same either way.

Usage: python bench/heartbeat_cost.py [--packets 5000]
Writes bench/results/heartbeat_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write  # noqa: E402

from vigil.identity import KeyRing, PairKeys, SigningKeys, generate  # noqa: E402
from vigil.net.transport import HeartbeatReceiver  # noqa: E402
from vigil.net.wire import Heartbeat, encode, mac_body, seal  # noqa: E402

PEERS = 18


def setup():
    signers = {n: SigningKeys(n, 1, {1: generate()}) for n in ["me", *(f"p{i}" for i in range(PEERS))]}
    ring = KeyRing({n: {1: sk.keys[1].public_key()} for n, sk in signers.items()})
    return signers, ring


def receive_cost(packets: int, sealed: bool) -> dict:
    signers, ring = setup()
    clock = [1000.0]
    rx = HeartbeatReceiver("prod", "me", ring, {"p0": {"127.0.0.1"}}, lambda: clock[0], 2.0, lambda: clock[0])
    rx.pairs = PairKeys("prod", signers["me"], ring)
    sender = PairKeys("prod", signers["p0"], ring)
    made = []
    for i in range(packets):
        hb = Heartbeat("prod", "p0", 7, i + 1, int((1000.0 + i * 0.1) * 1e6), "healthy", "standby")
        made.append(seal(mac_body(hb, 1), sender.key(1, "me", 1), 1, "me") if sealed else encode(hb, signers["p0"]))
    first, dup = [], []
    for i, p in enumerate(made):
        clock[0] = 1000.0 + i * 0.1
        t0 = time.perf_counter()
        v1, _ = rx.receive(p, "127.0.0.1")
        t1 = time.perf_counter()
        v2, _ = rx.receive(p, "127.0.0.1")
        t2 = time.perf_counter()
        assert (v1, v2) == ("accepted", "duplicate"), (v1, v2)
        first.append(t1 - t0)
        dup.append(t2 - t1)
    return {"first_copy_us": round(statistics.median(first) * 1e6, 2),
            "duplicate_us": round(statistics.median(dup) * 1e6, 2)}


def send_cost(rounds: int, sealed: bool) -> float:
    signers, ring = setup()
    pairs = PairKeys("prod", signers["me"], ring)
    peers = [f"p{i}" for i in range(PEERS)]
    times = []
    for i in range(rounds):
        hb = Heartbeat("prod", "me", 7, i + 1, int(time.time() * 1e6), "healthy", "standby")
        t0 = time.perf_counter()
        if sealed:
            body = mac_body(hb, 1)
            for p in peers:
                seal(body, pairs.key(1, p, 1), 1, p)
        else:
            encode(hb, signers["me"])
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times) * 1e6, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=5000)
    args = ap.parse_args()
    doc = {"peers": PEERS}
    for name, sealed in (("ed25519_v2", False), ("pair_key_v4", True)):
        doc[name] = {**receive_cost(args.packets, sealed), "send_all_peers_us": send_cost(args.packets // 5, sealed)}
    rate = 2 * 10 * PEERS  # packets a second a node receives from 18 peers (2 copies every 100 ms)
    for name in ("ed25519_v2", "pair_key_v4"):
        d = doc[name]
        d["receive_cpu_pct_at_18_peers"] = round((d["first_copy_us"] + d["duplicate_us"]) * rate / 2 / 1e4, 2)
    e, m = doc["ed25519_v2"], doc["pair_key_v4"]
    rows = [["wire", "first copy (µs)", "duplicate (µs)", "send to 18 peers (µs)", "receive CPU at 18 peers (% core)"],
            ["v2, Ed25519 (before)", e["first_copy_us"], e["duplicate_us"], e["send_all_peers_us"],
             e["receive_cpu_pct_at_18_peers"]],
            ["v4, pair-key HMAC (after)", m["first_copy_us"], m["duplicate_us"], m["send_all_peers_us"],
             m["receive_cpu_pct_at_18_peers"]]]
    write("heartbeat_cost", doc, rows,
          f"Medians over {args.packets} packets, one process, this machine. A duplicate is the second "
          "copy of a heartbeat, judged without a parse. Receive CPU: 18 peers x 2 copies x 10/s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
