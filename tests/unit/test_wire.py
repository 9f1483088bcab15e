"""Forged, truncated, replayed, wrong-cluster, wrong-source, stale and
random packets are rejected and counted; none ever raises out of the
receiver. Each node signs with its own key: none can speak for another."""

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from vigil.errors import WireError
from vigil.identity import SIG_LEN, KeyRing, SigningKeys, generate
from vigil.net.transport import HeartbeatReceiver
from vigil.net.wire import REJECT_REASONS, Heartbeat, ReplayGuard, decode, encode

NOW_US = 1_700_000_000_000_000
SIGNERS = {n: SigningKeys(n, 1, {1: generate(), 2: generate()}) for n in ("a", "b", "c")}
RING = KeyRing({n: {1: sk.keys[1].public_key()} for n, sk in SIGNERS.items()})
KEY = SIGNERS["b"]


def hb(seq=1, inc=100, node="b", cluster="prod", sent=NOW_US, **kw):
    return Heartbeat(cluster, node, inc, seq, sent, **kw)


def test_roundtrip():
    h = hb(health="healthy", role="leader")
    assert decode(encode(h, KEY), RING, "prod") == h


def test_a_packet_out_of_schedule_says_so_in_a_flag_earlier_agents_ignore():
    h = hb(role="leader", extra=True)
    packet = encode(h, KEY)
    assert packet[5] == 1 and decode(packet, RING, "prod") == h
    assert encode(hb(), KEY)[5] == 0


def test_suspicions_travel_as_version_3_and_none_as_version_2():
    h = hb(health="healthy", suspects=("a", "c"))
    packet = encode(h, KEY)
    assert packet[4] == 3 and decode(packet, RING, "prod") == h
    quiet = encode(hb(suspects=()), KEY)
    assert quiet[4] == 2, "no suspicion: the packet earlier agents send and accept"
    assert decode(quiet, RING, "prod").suspects is None, "version 2 says nothing about suspicions"
    too_many = encode(hb(suspects=tuple(f"n{i}" for i in range(40))), KEY)
    assert too_many[4] == 2, "more than a packet lists: left to the member record"


@pytest.mark.parametrize("trailer", [b"", b"\x00", b"\x21" + b"\x01a" * 33, b"\x02\x01a",
                                     b"\x01\x05ab", b"\x01\x00", b"\x01\x01a\x00", b"\x01\x02\xff\xfe"])
def test_signed_but_malformed_suspicion_lists_are_rejected(trailer):
    body = bytearray(encode(hb(), KEY)[:-SIG_LEN]) + trailer
    body[4] = 3
    with pytest.raises(WireError) as e:
        decode(bytes(body) + KEY.sign(bytes(body)), RING, "prod")
    assert e.value.reason == "malformed"


def test_a_node_cannot_speak_for_another():
    """c holds a valid key, but only its own: a packet naming b is forged."""
    with pytest.raises(WireError) as e:
        decode(encode(hb(node="b"), SIGNERS["c"]), RING, "prod")
    assert e.value.reason == "forged"


def test_key_ids_rotate_without_a_flag_day():
    b2 = SigningKeys("b", 2, KEY.keys)
    with pytest.raises(WireError) as e:  # key 2 not yet in the ring: named, not "forged"
        decode(encode(hb(), b2), RING, "prod")
    assert e.value.reason == "unknown_key"
    both = KeyRing({**RING.members, "b": {1: KEY.keys[1].public_key(), 2: KEY.keys[2].public_key()}})
    assert decode(encode(hb(), KEY), both, "prod").node == "b", "old key still accepted"
    assert decode(encode(hb(), b2), both, "prod").node == "b", "new key accepted"


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p[:20], "truncated"),
    (lambda p: b"XXXX" + p[4:], "bad_magic"),
    (lambda p: p[:4] + b"\x01" + p[5:], "bad_version"),
    (lambda p: p + b"\x00", "malformed"),
    (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "forged"),
    (lambda p: p[:40] + bytes([p[40] ^ 1]) + p[41:], "forged"),
])
def test_mutations_are_rejected_with_their_reason(mutate, reason):
    with pytest.raises(WireError) as e:
        decode(mutate(encode(hb(), KEY)), RING, "prod")
    assert e.value.reason == reason


def test_wrong_key_is_forged_and_wrong_cluster_is_named():
    with pytest.raises(WireError) as e:
        decode(encode(hb(), SigningKeys("b", 1, {1: generate()})), RING, "prod")
    assert e.value.reason == "forged"
    with pytest.raises(WireError) as e:
        decode(encode(hb(cluster="test"), KEY), RING, "prod")
    assert e.value.reason == "wrong_cluster"


def test_signed_but_out_of_range_fields_are_malformed():
    body = bytearray(encode(hb(), KEY)[:-SIG_LEN])
    body[32] = 9  # health code
    packet = bytes(body) + KEY.sign(bytes(body))
    with pytest.raises(WireError) as e:
        decode(packet, RING, "prod")
    assert e.value.reason == "malformed"


def test_replay_guard_window():
    g = ReplayGuard(window=8)
    assert g.check(1, 10) == "accepted"
    assert g.check(1, 10) == "duplicate"
    assert g.check(1, 8) == "accepted", "reordered within the window"
    assert g.check(1, 8) == "duplicate"
    assert g.check(1, 30) == "accepted"
    assert g.check(1, 11) == "replayed", "older than the window"
    assert g.check(0, 99) == "replayed", "older incarnation"
    assert g.check(2, 1) == "accepted", "a restart starts a new sequence"


def receiver(skew=2.0):
    """A receiver whose monotonic clock moves 100 ms per signature check (one
    heartbeat interval): the verification budget (vigil.net.admit) never binds here."""
    return HeartbeatReceiver("prod", "a", RING, {"b": {"10.0.0.2"}, "c": {"10.0.0.3"}},
                             lambda: NOW_US / 1e6, skew, itertools.count(0, 0.1).__next__)


def test_receiver_counts_every_verdict():
    r = receiver()
    p1 = encode(hb(seq=1), KEY)
    assert r.receive(p1, "10.0.0.2")[0] == "accepted"
    assert r.receive(p1, "10.0.0.2")[0] == "duplicate"
    for s in range(2, 100):
        r.receive(encode(hb(seq=s), KEY), "10.0.0.2")
    assert r.receive(p1, "10.0.0.2")[0] == "replayed"
    zz = SigningKeys("zz", 1, {1: generate()})
    assert r.receive(encode(hb(node="zz"), zz), "10.0.0.2")[0] == "unknown_node"
    assert r.receive(encode(hb(node="a"), SIGNERS["a"]), "10.0.0.2")[0] == "self"
    assert r.receive(b"garbage", "10.0.0.2")[0] == "truncated"
    assert r.counters["accepted"] == 99 and r.counters["replayed"] == 1


def test_packets_from_another_address_are_refused():
    """b's genuine packet, sent on by someone at c's address (or anywhere else)."""
    r = receiver()
    assert r.receive(encode(hb(), KEY), "10.0.0.3")[0] == "wrong_source"
    assert r.receive(encode(hb(), KEY), "10.0.0.2")[0] == "accepted"


def test_captured_packets_are_refused_after_a_restart():
    """The replay windows live in memory; the send time is signed, so a packet
    captured more than `max_skew` ago is refused by a freshly started receiver."""
    old = encode(hb(sent=NOW_US - 3_000_000), KEY)
    assert receiver(skew=2.0).receive(old, "10.0.0.2")[0] == "stale"
    assert receiver(skew=2.0).receive(encode(hb(sent=NOW_US + 3_000_000), KEY), "10.0.0.2")[0] == "stale"
    r = receiver(skew=5.0)
    assert r.receive(old, "10.0.0.2")[0] == "accepted" and r.skew["b"] == pytest.approx(-3.0)
    assert set(r.counters) <= set(REJECT_REASONS) | {"accepted"}


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=300))
def test_random_packets_are_rejected_and_counted(data):
    r = receiver()
    verdict, h = r.receive(data, "10.0.0.2")
    assert h is None and verdict in REJECT_REASONS
    assert sum(r.counters.values()) == 1


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_single_byte_change_is_rejected(pos, xor):
    packet = bytearray(encode(hb(), KEY))
    pos %= len(packet)
    if xor == 0:
        xor = 1
    packet[pos] ^= xor
    verdict, h = receiver().receive(bytes(packet), "10.0.0.2")
    assert h is None and verdict in REJECT_REASONS


@given(st.text(min_size=1, max_size=64).filter(lambda s: 1 <= len(s.encode()) <= 64),
       st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_roundtrip_any_name_and_counters(node, inc, seq):
    h = Heartbeat("prod", node, inc, seq, 0)
    signer = SigningKeys(node, 1, KEY.keys)
    assert decode(encode(h, signer), KeyRing({node: RING.members["b"]}), "prod") == h


def test_unencodable_fields_raise_wire_error():
    with pytest.raises(WireError):
        encode(Heartbeat("prod", "x" * 65, 1, 1, 0), KEY)
    with pytest.raises(WireError):
        encode(Heartbeat("prod", "b", -1, 1, 0), KEY)
