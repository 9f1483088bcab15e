"""Forged, truncated, replayed, wrong-cluster and random packets are rejected
and counted; none ever raises out of the receiver."""

import hashlib
import hmac

import pytest
from hypothesis import given, settings, strategies as st

from vigil.errors import WireError
from vigil.net.transport import HeartbeatReceiver
from vigil.net.wire import MAC_LEN, REJECT_REASONS, Heartbeat, ReplayGuard, decode, encode

KEY = bytes(range(32))


def hb(seq=1, inc=100, node="b", cluster="prod", **kw):
    return Heartbeat(cluster, node, inc, seq, 1_700_000_000_000_000, **kw)


def test_roundtrip():
    h = hb(health="healthy", role="leader")
    assert decode(encode(h, KEY), KEY, "prod") == h


@pytest.mark.parametrize("mutate, reason", [
    (lambda p: p[:20], "truncated"),
    (lambda p: b"XXXX" + p[4:], "bad_magic"),
    (lambda p: p[:4] + b"\x02" + p[5:], "bad_version"),
    (lambda p: p + b"\x00", "malformed"),
    (lambda p: p[:-1] + bytes([p[-1] ^ 1]), "forged"),
    (lambda p: p[:40] + bytes([p[40] ^ 1]) + p[41:], "forged"),
])
def test_mutations_are_rejected_with_their_reason(mutate, reason):
    with pytest.raises(WireError) as e:
        decode(mutate(encode(hb(), KEY)), KEY, "prod")
    assert e.value.reason == reason


def test_wrong_key_is_forged_and_wrong_cluster_is_named():
    with pytest.raises(WireError) as e:
        decode(encode(hb(), b"k" * 32), KEY, "prod")
    assert e.value.reason == "forged"
    with pytest.raises(WireError) as e:
        decode(encode(hb(cluster="test"), KEY), KEY, "prod")
    assert e.value.reason == "wrong_cluster"


def test_signed_but_out_of_range_fields_are_malformed():
    body = bytearray(encode(hb(), KEY)[:-MAC_LEN])
    body[32] = 9  # health code
    packet = bytes(body) + hmac.new(KEY, bytes(body), hashlib.sha256).digest()
    with pytest.raises(WireError) as e:
        decode(packet, KEY, "prod")
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


def receiver():
    return HeartbeatReceiver("prod", "a", KEY, {"b", "c"})


def test_receiver_counts_every_verdict():
    r = receiver()
    p1 = encode(hb(seq=1), KEY)
    assert r.receive(p1)[0] == "accepted"
    assert r.receive(p1)[0] == "duplicate"
    for s in range(2, 100):
        r.receive(encode(hb(seq=s), KEY))
    assert r.receive(p1)[0] == "replayed"
    assert r.receive(encode(hb(node="zz"), KEY))[0] == "unknown_node"
    assert r.receive(encode(hb(node="a"), KEY))[0] == "self"
    assert r.receive(b"garbage")[0] == "truncated"
    assert r.counters["accepted"] == 99 and r.counters["replayed"] == 1
    assert set(r.counters) <= set(REJECT_REASONS) | {"accepted"}


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_random_packets_are_rejected_and_counted(data):
    r = receiver()
    verdict, h = r.receive(data)
    assert h is None and verdict in REJECT_REASONS
    assert sum(r.counters.values()) == 1


@settings(max_examples=300)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_single_byte_change_is_rejected(pos, xor):
    packet = bytearray(encode(hb(), KEY))
    pos %= len(packet)
    if xor == 0:
        xor = 1
    packet[pos] ^= xor
    verdict, h = receiver().receive(bytes(packet))
    assert h is None and verdict in REJECT_REASONS


@given(st.text(min_size=1, max_size=64).filter(lambda s: 1 <= len(s.encode()) <= 64),
       st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_roundtrip_any_name_and_counters(node, inc, seq):
    h = Heartbeat("prod", node, inc, seq, 0)
    assert decode(encode(h, KEY), KEY, "prod") == h


def test_unencodable_fields_raise_wire_error():
    with pytest.raises(WireError):
        encode(Heartbeat("prod", "x" * 65, 1, 1, 0), KEY)
    with pytest.raises(WireError):
        encode(Heartbeat("prod", "b", -1, 1, 0), KEY)
