"""Issue 22 B10 and B11, on the receiver with an injected clock.

B10: a packet costs an Ed25519 verification only once the cheap checks
(node, source address, sequence number) pass, and what still needs one is
bounded per source address, so a flood naming a real peer, even from that
peer's own address, neither burns the CPU nor starves the peer's own packets.

B11: a node whose wall clock steps stays alive for its peers (an alarm, not
a suspicion); the send-time window guards only the first packet a freshly
started receiver hears.

And the two starvation holes a later review found in B10's budget: a flood
at the sequence numbers an attacker could predict (they started at 1), or
repeating one claim, drained the budget the peer's own packets share; and a
flood naming random incarnations starved the peer's first packet after
either side restarted."""

from __future__ import annotations

import asyncio
import random

import pytest

from vigil.agent.heartbeat import HeartbeatService
from vigil.clock import SystemClock
from vigil.config import parse_config
from vigil.identity import KeyRing, SigningKeys, generate
from vigil.net.admit import FAR_BURST, FAR_RATE, NEAR_BURST, TokenBucket
from vigil.net.transport import HeartbeatReceiver
from vigil.net.wire import REJECT_REASONS, Heartbeat, ReplayGuard, encode
from vigil.testing.keys import shared_keys

T0 = 1_700_000_000.0
INTERVAL = 0.1
SIGNERS = {n: SigningKeys(n, 1, {1: generate()}) for n in ("a", "b", "c")}
FORGER = SigningKeys("b", 1, {1: generate()})  # names b, holds a key that is not b's


class CountingRing(KeyRing):
    """The real ring, counting signature checks (the expensive part)."""

    verifications = 0

    def verify(self, node, key_id, data, signature):
        self.verifications += 1
        return super().verify(node, key_id, data, signature)


class Clocks:
    def __init__(self):
        self.mono, self.offset = 1000.0, 0.0

    def wall(self) -> float:
        return T0 + (self.mono - 1000.0) + self.offset


def receiver(clocks: Clocks, ring: KeyRing | None = None) -> HeartbeatReceiver:
    ring = ring or CountingRing({n: {1: s.keys[1].public_key()} for n, s in SIGNERS.items()})
    return HeartbeatReceiver("prod", "a", ring, {"b": {"10.0.0.2", "10.1.0.2"}, "c": {"10.0.0.3"}},
                             clocks.wall, 2.0, lambda: clocks.mono, INTERVAL)


def beat(seq: int, sent: float, node="b", inc=100, signer=None) -> bytes:
    return encode(Heartbeat("prod", node, inc, seq, int(sent * 1e6), "healthy", "leader"),
                  signer or SIGNERS[node])


def test_packets_the_cheap_checks_refuse_cost_no_signature_check():
    c = Clocks()
    r = receiver(c)
    genuine = beat(5, c.wall())
    assert r.receive(genuine, "10.0.0.2")[0] == "accepted"
    assert r.receive(beat(9, c.wall()), "10.0.0.2")[0] == "accepted"
    before = r.ring.verifications
    cases = [
        (beat(10, c.wall(), node="zz", signer=SigningKeys("zz", 1, {1: generate()})), "10.0.0.2", "unknown_node"),
        (beat(10, c.wall(), signer=FORGER), "192.0.2.7", "wrong_source"),  # b's name, a stranger's address
        (beat(10, c.wall(), node="c"), "10.0.0.2", "wrong_source"),  # c's packet from b's address
        (beat(10, c.wall(), node="a"), "10.0.0.2", "self"),
        (beat(10, c.wall(), inc=99, signer=FORGER), "10.0.0.2", "replayed"),  # an older incarnation
        (genuine, "10.1.0.2", "duplicate"),  # the same bytes on b's second link
        (b"VGHB" + bytes(200), "10.0.0.2", "bad_version"),
    ]
    for packet, source, verdict in cases:
        assert r.receive(packet, source)[0] == verdict
    assert r.ring.verifications == before, "none of these needed an Ed25519 check"
    assert set(r.counters) <= set(REJECT_REASONS) | {"accepted"}


def test_a_forged_packet_never_moves_the_replay_window():
    """Had a forged seq 10**6 been recorded, b's real next packet would be 'replayed'."""
    c = Clocks()
    r = receiver(c)
    assert r.receive(beat(1, c.wall()), "10.0.0.2")[0] == "accepted"
    assert r.receive(beat(2, c.wall(), signer=FORGER), "10.0.0.2")[0] == "forged"
    assert r.receive(beat(10**6, c.wall(), signer=FORGER), "10.0.0.2")[0] in ("forged", "rate_limited")
    assert r.receive(beat(10**6, c.wall(), inc=101, signer=FORGER), "10.0.0.2")[0] in ("forged", "rate_limited")
    assert r.receive(beat(2, c.wall()), "10.0.0.2")[0] == "accepted"
    # A forged copy of a seq already seen is not mistaken for a duplicate either.
    assert r.receive(beat(2, c.wall(), signer=FORGER), "10.1.0.2")[0] == "forged"


@pytest.mark.parametrize("guess", ["random", "ahead", "new_incarnation"])
def test_a_spoofed_flood_from_the_peers_own_address_is_bounded_and_starves_nothing(guess):
    """20,000 forged packets a second for 10 s, all naming b and all from b's own
    address, around b's genuine heartbeats every 100 ms. Every genuine heartbeat is
    delivered, and the flood costs a few verifications a second, not 20,000."""
    c, rng = Clocks(), random.Random(7)
    r = receiver(c)
    seconds, flood_per_tick = 10, 2000  # per 100 ms interval
    delivered, seq = 0, 0
    forged = {"random": lambda s: beat(rng.getrandbits(63), c.wall(), signer=FORGER),
              "ahead": lambda s: beat(s + 10_000 + rng.randrange(10**6), c.wall(), signer=FORGER),
              "new_incarnation": lambda s: beat(1, c.wall(), inc=101 + rng.randrange(10**9), signer=FORGER)}[guess]
    packets = [forged(0) for _ in range(500)]  # a pool: encoding 200,000 would take longer than the test
    for _ in range(int(seconds / INTERVAL)):
        seq += 1
        delivered += r.receive(beat(seq, c.wall()), "10.0.0.2")[0] == "accepted"
        for i in range(flood_per_tick):
            c.mono += INTERVAL / flood_per_tick
            r.receive(packets[i % len(packets)], "10.0.0.2")
    assert delivered == seq, f"{seq - delivered} genuine heartbeats lost to the flood"
    spent_on_flood = r.ring.verifications - seq
    assert spent_on_flood <= FAR_BURST + FAR_RATE * seconds + NEAR_BURST, \
        f"{spent_on_flood} verifications for {seconds * flood_per_tick * 10} forged packets"
    assert r.counters["rate_limited"] + r.counters["replayed"] + r.counters["forged"] == seconds * flood_per_tick * 10


def test_a_peer_heard_again_after_a_long_silence_is_not_rate_limited():
    """A partition of 10 minutes: b's sequence numbers moved on by 6,000 meanwhile;
    its first packet after the partition is still near (the window grows with silence)."""
    c = Clocks()
    r = receiver(c)
    assert r.receive(beat(1, c.wall()), "10.0.0.2")[0] == "accepted"
    c.mono += 600
    for s in range(6001, 6101):
        c.mono += INTERVAL
        assert r.receive(beat(s, c.wall()), "10.0.0.2")[0] == "accepted"
    assert r.counters["rate_limited"] == 0


def test_token_bucket_refills_at_its_rate_and_ignores_a_clock_going_back():
    b = TokenBucket(rate=10, burst=3)
    assert [b.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert b.take(0.1) and not b.take(0.1)
    assert not b.take(0.05), "an earlier now refills nothing"
    assert b.take(10.0) and b.take(10.0) and b.take(10.0) and not b.take(10.0), "at most burst saved"


@pytest.mark.parametrize("step", [30.0, -30.0])
def test_a_peer_whose_clock_steps_stays_alive_and_raises_the_skew_alarm(step):
    """B11: b's clock steps by 30 s; every packet it sends afterwards is delivered."""
    c = Clocks()
    r = receiver(c)
    sent_offset = 0.0
    for seq in range(1, 301):
        if seq == 100:
            sent_offset = step  # the NTP step on b
        if seq == 200:
            sent_offset = 0.0  # and back
        c.mono += INTERVAL
        verdict, hb = r.receive(beat(seq, c.wall() + sent_offset), "10.0.0.2")
        assert verdict == "accepted" and hb is not None, f"packet {seq}: {verdict}"
        assert ("b" in r.skewed) == (100 <= seq < 200)
    assert r.counters["skewed"] == 100 and r.counters["stale"] == 0
    assert r.skew["b"] == pytest.approx(0.0, abs=1e-3)


def test_our_own_clock_stepping_keeps_every_peer_alive():
    c = Clocks()
    r = receiver(c)
    for seq in range(1, 50):
        c.mono += INTERVAL
        c.offset = -30.0 if seq >= 20 else 0.0
        assert r.receive(beat(seq, T0 + c.mono - 1000.0), "10.0.0.2")[0] == "accepted"
    assert r.skewed["b"] == pytest.approx(30.0, abs=0.01)


def test_a_fresh_receiver_still_refuses_a_captured_packet_by_its_send_time():
    """The replay window is in memory: after our restart, only the send time tells a
    packet captured a minute ago from a live one. The skew is still reported."""
    c = Clocks()
    captured = beat(7, c.wall() - 60)
    fresh = receiver(c)
    assert fresh.receive(captured, "10.0.0.2")[0] == "stale" and "b" in fresh.skewed
    assert fresh.receive(beat(8, c.wall()), "10.0.0.2")[0] == "accepted"
    assert fresh.receive(captured, "10.0.0.2")[0] == "stale", "a gap behind the highest seq is no proof of life"
    assert fresh.receive(beat(1, c.wall() - 60, inc=101), "10.0.0.2")[0] == "stale", \
        "nor is a new incarnation: its first packet may have been captured while we missed it"
    assert fresh.receive(beat(9, c.wall() - 60), "10.0.0.2")[0] == "accepted", "signed after seq 8: alive"


def test_the_skew_alarm_clears_only_well_inside_the_window():
    c = Clocks()
    r = receiver(c)
    for seq, off in enumerate([0.0, 2.5, 1.5, 1.2, 0.9, 0.2], start=1):
        r.receive(beat(seq, c.wall() + off), "10.0.0.2")
        assert ("b" in r.skewed) == (off in (2.5, 1.5, 1.2)), off


# -- the starvation holes in the budget (sequence numbers, restarts) ------------

def first_seq(incarnation: int) -> int:
    """The first sequence number an agent's HeartbeatService of `incarnation` sends."""
    keys = shared_keys("a", "b")
    cfg = parse_config({"cluster": "prod", "node": "b", "etcd": {"endpoints": ["http://127.0.0.1:1"]},
                        "heartbeat": {**keys["b"], "port": 1,
                                      "peers": [{"name": "a", "addresses": ["127.0.0.1"], "port": 2}]}})
    service = HeartbeatService(cfg, SystemClock(), incarnation, lambda changes: None,
                               lambda: ("healthy", "leader"))

    async def send() -> int:  # not started: nothing leaves, the heartbeat is only built
        return service.send_now(extra=False).seq
    return asyncio.run(send())


def blind_flood(rng: random.Random, c: Clocks) -> list[bytes]:
    """Forged packets naming b with random incarnations and sequence numbers."""
    return [beat(rng.getrandbits(62), c.wall(), inc=rng.getrandbits(62), signer=FORGER) for _ in range(200)]


def flooded(r: HeartbeatReceiver, c: Clocks, genuine, forged, intervals: int, per_interval: int = 2000) -> list[str]:
    """Each interval: `per_interval` forged packets (20,000/s), then b's next genuine one;
    the genuine verdicts. `genuine(i)` and `forged(i, j)` build the packets."""
    verdicts = []
    for i in range(intervals):
        for j in range(per_interval):
            c.mono += INTERVAL / per_interval
            r.receive(forged(i, j), "10.0.0.2")
        verdicts.append(r.receive(genuine(i), "10.0.0.2")[0])
    return verdicts


def test_each_incarnation_numbers_its_heartbeats_from_a_secret_random_start():
    """Sequence numbers started at 1: an attacker who read the incarnation in the
    member record knew the next one. Now no record holds the start, and the
    64-bit field has room for 2**62 packets after it."""
    starts = [first_seq(100 + i) for i in range(4)]
    assert len(set(starts)) == 4 and all(0 <= s < 2**62 for s in starts), starts


def test_a_flood_at_the_sequence_numbers_an_attacker_could_predict_starves_nothing():
    """The review's /tmp/starve.py: 20,000 forged packets a second at what would be
    b's next sequence number if it counted from 1 (its incarnation is public). On
    7cf5bfd they drained the near budget and every genuine heartbeat was lost."""
    c = Clocks()
    r = receiver(c)
    start = first_seq(100)
    assert r.receive(beat(start, c.wall()), "10.0.0.2")[0] == "accepted"
    forged = {i: beat(i + 2, c.wall(), signer=FORGER) for i in range(30)}
    verdicts = flooded(r, c, lambda i: beat(start + 1 + i, c.wall()), lambda i, j: forged[i], 30)
    assert verdicts == ["accepted"] * 30
    assert r.ring.verifications - 31 <= FAR_BURST + FAR_RATE * 3 + 1


@pytest.mark.parametrize("claim", ["ahead", "seen"])
def test_a_forged_claim_repeated_costs_one_check_of_the_peers_budget(claim):
    """An attacker that once learnt b's sequence numbers floods forged packets (each
    different) claiming one of them: a number b has not reached yet, or one it sent.
    One fails its check; repeats pay from the slow budget, not the near one b's
    own packets need."""
    c = Clocks()
    r = receiver(c)
    start = 2**61 + 12345
    assert r.receive(beat(start, c.wall()), "10.0.0.2")[0] == "accepted"
    target = start + 40 if claim == "ahead" else start
    verdicts = flooded(r, c, lambda i: beat(start + 1 + i, c.wall()),
                       lambda i, j: beat(target, c.wall() + j * 1e-6, signer=FORGER), 30)
    assert verdicts == ["accepted"] * 30, f"{30 - verdicts.count('accepted')} genuine heartbeats lost"
    assert r.ring.verifications - 31 <= 1 + FAR_BURST + FAR_RATE * 3 + 1


@pytest.mark.parametrize("restarted", ["receiver", "peer"])
def test_after_a_restart_the_incarnation_the_record_names_is_heard_under_a_blind_flood(restarted):
    """The review's /tmp/starve2.py: forged packets naming random incarnations drained
    the only budget a new incarnation had (2/s), so b was never heard while the flood
    lasted, after our restart or after b's. Its member record (only b writes it) names
    its incarnation: packets claiming that one have a budget of their own."""
    c, rng = Clocks(), random.Random(3)
    r = receiver(c)
    inc = 100
    if restarted == "peer":
        r.expect("b", 100)
        assert r.receive(beat(first_seq(100), c.wall()), "10.0.0.2")[0] == "accepted"
        inc = 200  # b restarts; its new record is read
    r.expect("b", inc)
    r.expect("zz", 7)  # not tracked: no hint
    r.expect("c", 0)  # a record that names none: no hint
    assert r.expected == {"b": inc}
    start, pool = first_seq(inc), blind_flood(rng, c)
    before = r.ring.verifications
    verdicts = flooded(r, c, lambda i: beat(start + i, c.wall(), inc=inc), lambda i, j: pool[j % len(pool)], 30)
    assert verdicts == ["accepted"] * 30, f"{verdicts.count('rate_limited')} genuine heartbeats lost"
    assert r.ring.verifications - before - 30 <= FAR_BURST + FAR_RATE * 3 + 1
    r.untrack("b")
    assert "b" not in r.expected


def test_the_replay_window_takes_any_jump_of_the_64_bit_sequence_number():
    """Shifting the window by the jump itself would allocate 2**63 bits."""
    g = ReplayGuard()
    assert g.check(1, 5) == "accepted" and g.check(1, 2**64 - 1) == "accepted"
    assert g.check(1, 2**64 - 1) == "duplicate" and g.check(1, 5) == "replayed"
    assert g.check(1, 2**64 - 3) == "accepted" and g.peek(1, 2**64 - 2) == "accepted"
