"""Heartbeats under pair keys (vigil.identity.PairKeys, wire version 4): the
same guarantees as a signature, at the cost of an HMAC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from vigil.errors import WireError
from vigil.identity import KeyRing, PairKeys, SigningKeys, generate, x25519_private, x25519_public
from vigil.net.transport import HeartbeatReceiver
from vigil.net.wire import REJECT_REASONS, VERSION_MAC, Heartbeat, mac_body, parse, seal

NOW_US = 1_700_000_000_000_000
SIGNERS = {n: SigningKeys(n, 1, {1: generate(), 2: generate()}) for n in ("a", "b", "c")}
RING = KeyRing({n: {1: sk.keys[1].public_key(), 2: sk.keys[2].public_key()} for n, sk in SIGNERS.items()})


def pairs(node: str, ring: KeyRing = RING) -> PairKeys:
    return PairKeys("prod", SIGNERS[node], ring)


def packet(sender="b", receiver="a", sender_id=1, receiver_id=1, seq=1, **kw) -> bytes:
    hb = Heartbeat("prod", sender, 100, seq, NOW_US, **kw)
    key = pairs(sender).key(sender_id, receiver, receiver_id)
    return seal(mac_body(hb, sender_id), key, receiver_id, receiver)


def receiver(me="a") -> HeartbeatReceiver:
    r = HeartbeatReceiver("prod", me, RING, {n: {"10.0.0.2"} for n in SIGNERS if n != me}, lambda: NOW_US / 1e6)
    r.pairs = pairs(me)
    return r


def test_the_edwards_to_montgomery_conversion_matches_x25519():
    for sk in SIGNERS.values():
        for key in sk.keys.values():
            assert x25519_private(key).public_key().public_bytes_raw() == \
                x25519_public(key.public_key()).public_bytes_raw()


def test_both_ends_derive_the_same_key_and_no_one_else_does():
    ab = pairs("a").key(1, "b", 2)
    assert ab == pairs("b").key(2, "a", 1)
    assert ab != pairs("a").key(1, "b", 1) != pairs("c").key(1, "b", 2)
    assert ab != PairKeys("other-cluster", SIGNERS["a"], RING).key(1, "b", 2)


def test_a_sealed_heartbeat_round_trips_with_its_suspicions_and_flags():
    p = packet(suspects=("c",), extra=True, role="leader", health="healthy")
    u = parse(p, "prod")
    assert p[4] == VERSION_MAC and u.peer_id == 1
    hb = u.verify(RING, pairs("a"))
    assert (hb.node, hb.suspects, hb.extra, hb.role) == ("b", ("c",), True, "leader")
    assert len(p) < 80  # vs 64 bytes of signature alone


def test_only_the_named_sender_can_make_a_packet_the_receiver_accepts():
    # c makes a packet naming b, with the only pair key it can derive with a (c-a): forged
    hb = Heartbeat("prod", "b", 100, 1, NOW_US)
    forged = seal(mac_body(hb, 1), pairs("c").key(1, "a", 1), 1, "a")
    assert receiver().receive(forged, "10.0.0.2")[0] == "forged"
    # a packet b sealed for c is no good to a (the tag binds the receiver's name and key)
    for_c = packet(receiver="c")
    assert receiver().receive(for_c, "10.0.0.2")[0] == "forged"
    assert receiver("c").receive(for_c, "10.0.0.2")[0] == "accepted"


def test_key_ids_the_receiver_does_not_hold_are_named():
    r = receiver()
    r.pairs = PairKeys("prod", SigningKeys("a", 1, {1: SIGNERS["a"].keys[1]}), RING)
    assert r.receive(packet(receiver_id=2), "10.0.0.2")[0] == "unknown_key"
    assert r.receive(packet(sender_id=2, seq=2), "10.0.0.2")[0] == "accepted"
    ring1 = KeyRing({n: {1: sk.keys[1].public_key()} for n, sk in SIGNERS.items()})
    r.pairs = PairKeys("prod", SIGNERS["a"], ring1)
    assert r.receive(packet(sender_id=2, seq=3), "10.0.0.2")[0] == "unknown_key"


def test_a_router_without_keys_refuses_sealed_packets_by_name():
    r = receiver()
    r.pairs = None
    assert r.receive(packet(), "10.0.0.2")[0] == "unknown_key"


def test_replays_and_duplicates_are_judged_as_for_signed_packets():
    r = receiver()
    p = packet(seq=5)
    assert [r.receive(p, "10.0.0.2")[0] for _ in range(2)] == ["accepted", "duplicate"]
    assert r.receive(packet(seq=1), "10.0.0.2")[0] == "accepted"  # within the window, unseen
    assert r.receive(packet(seq=1), "10.0.0.2")[0] == "duplicate"


@settings(max_examples=1500, deadline=None)
@given(st.integers(0, 200), st.integers(1, 255))
def test_any_single_byte_change_is_rejected(pos, xor):
    p = bytearray(packet(suspects=("c",)))
    p[pos % len(p)] ^= xor
    verdict, hb = receiver().receive(bytes(p), "10.0.0.2")
    assert hb is None and verdict in REJECT_REASONS


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120))
def test_anything_after_a_version_4_header_is_rejected_and_counted(tail):
    head = packet()[:36]
    r = receiver()
    verdict, hb = r.receive(head + tail, "10.0.0.2")
    assert (hb is None and verdict in REJECT_REASONS) or verdict == "accepted"
    assert sum(r.counters.values()) == 1


def test_unknown_peers_are_named_not_raised():
    with pytest.raises(WireError) as e:
        pairs("a").key(1, "stranger", 1)
    assert e.value.reason == "unknown_node"


def test_a_copy_is_a_duplicate_only_from_its_nodes_addresses_and_inside_the_window():
    r = HeartbeatReceiver("prod", "a", RING, {"b": {"10.0.0.2", "10.1.0.2"}}, lambda: NOW_US / 1e6)
    r.pairs = pairs("a")
    first = packet(seq=1)
    assert r.receive(first, "10.0.0.2")[0] == "accepted"
    assert r.receive(first, "10.1.0.2")[0] == "duplicate"  # the second link
    assert r.receive(first, "10.9.9.9")[0] == "wrong_source"
    for seq in range(2, 80):
        r.receive(packet(seq=seq), "10.0.0.2")
    assert r.receive(first, "10.0.0.2")[0] == "replayed"  # out of the window: not a duplicate
    r.untrack("b")
    assert r.receive(packet(seq=79), "10.0.0.2")[0] == "unknown_node"
