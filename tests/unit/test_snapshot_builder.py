"""The snapshot kept up to date key by key (SnapshotBuilder, what the watched
mirror decides on) equals the snapshot of one range read of the same keys
(parse_snapshot), after any sequence of puts and deletes: good and bad
records of every decided family, keys no decision reads, and keys that try
to speak for another node (`members/x/n1`). Dict order is part of it: a
range read returns keys in order, and so must the builder."""

from __future__ import annotations

import json

from hypothesis import given, settings, strategies as st

from dataclasses import replace

from vigil.core.records import BadRecord
from vigil.store.base import KeyValue
from vigil.store.election import leader_from
from vigil.store.keys import Keys
from vigil.store.records import family_of, nested_in, node_of, parse_as
from vigil.store.snapshot import UNNAMED_LEADER, Snapshot, SnapshotBuilder, member_info, parse_snapshot

K = Keys("c")
NODES = ["n1", "n2", "n3", "n0"]


def _keys() -> list[str]:
    per_node = [f(n) for n in NODES for f in (K.member, K.state, K.fence_marker, K.hold)]
    odd = [K.members + "x/n1", K.states + "n1/n2", K.members + "not a name", K.payload("p1"), K.leader + "x"]
    return [K.leader, K.switchover, *per_node, *odd]


VALUES = {
    "members": [json.dumps({"name": "n", "priority": 5, "suspects": ["n2"]}),
                json.dumps({"name": "n", "priority": 7, "health": {"verdict": "degraded", "may_lead": False}}),
                "{not json", json.dumps({"priority": "high"})],
    "state": ["standby", "failed", "fenced", "sideways"],
    "fencing": [json.dumps({"state": "in_progress", "by": "n2", "reason": "r"}),
                json.dumps({"state": "failed", "by": "n3", "reason": "ipmi"}), json.dumps({"state": "odd"})],
    "held": [json.dumps({"until": 1.7e9, "why": "flapping"}), json.dumps({"until": "soon"})],
    "leader": ["n1", "n2", ""],
    "switchover": [json.dumps({"to": "n2", "by": "op"}), "[]"],
}


def _value(key: str, i: int) -> str:
    f = family_of(K, key)
    choices = VALUES.get(f.name if f else "", ["{}", "anything"])
    return choices[i % len(choices)]


ops = st.lists(st.tuples(st.sampled_from(["put", "put", "put", "delete"]), st.sampled_from(_keys()),
                         st.integers(0, 7), st.sampled_from([0, 11, 12])), max_size=60)


def oracle(kvs: list[KeyValue], revision: int) -> Snapshot:
    """The snapshot of one range read, written out as one pass over the keys (the
    implementation before the builder), independent of it: the property's oracle."""
    snap = Snapshot(revision, None)
    for kv in sorted(kvs, key=lambda kv: kv.key):
        f = family_of(K, kv.key)
        if f is None and nested_in(K, kv.key):
            snap.bad_records[kv.key] = "nested"
            continue
        if f is None or f.name not in ("leader", "members", "state", "fencing", "held", "switchover"):
            continue
        rec = parse_as(f, kv.key, kv.value)
        if isinstance(rec, BadRecord):
            snap.bad_records[kv.key] = rec.problem
            if f.name == "leader":
                snap = replace(snap, leader=replace(leader_from(kv), name=UNNAMED_LEADER))
        elif f.name == "leader":
            snap = replace(snap, leader=leader_from(kv))
        elif f.name == "switchover":
            snap = replace(snap, switchover=rec)
        elif f.name == "members":
            snap.members[rec.name], snap.member_leases[rec.name] = rec, kv.lease
        elif f.name == "state":
            snap.states[node_of(kv.key)] = rec
        elif f.name == "fencing":
            snap.fence_blocked[rec.node] = rec.reason
            if rec.state == "in_progress":
                snap.fence_attempts[rec.node] = (rec.by, kv.create_revision)
        else:
            snap.holds[rec.node] = {"until": rec.until, "why": rec.why}
    return replace(snap, infos={n: member_info(r, snap.member_leases[n]) for n, r in snap.members.items()})


def _equal(a: Snapshot, b: Snapshot) -> None:
    assert a.bad_records.keys() == b.bad_records.keys()
    a, b = replace(a, bad_records={}), replace(b, bad_records={})  # problems are worded by the parsers
    assert a == b
    for name in ("members", "member_leases", "states", "fence_blocked", "fence_attempts", "bad_records", "holds"):
        assert list(getattr(a, name)) == list(getattr(b, name)), f"{name} in key order"
    assert list(a.member_infos().items()) == list(b.member_infos().items())


@settings(max_examples=300, deadline=None)
@given(ops)
def test_a_snapshot_kept_per_change_equals_one_read_of_the_same_keys(changes):
    builder, kvs = SnapshotBuilder(K), {}
    for rev, (op, key, i, lease) in enumerate(changes, start=1):
        if op == "delete":
            kvs.pop(key, None)
            builder.delete(key)
        else:
            old = kvs.get(key)
            kv = KeyValue(key, _value(key, i), old.create_revision if old else rev, rev, lease=lease)
            kvs[key] = kv
            builder.put(kv)
        _equal(builder.snapshot(rev), oracle(list(kvs.values()), rev))
    reloaded = SnapshotBuilder(K)
    reloaded.load(list(kvs.values()))
    _equal(reloaded.snapshot(len(changes)), builder.snapshot(len(changes)))
    _equal(parse_snapshot(K, list(kvs.values()), len(changes)), builder.snapshot(len(changes)))


def test_a_key_below_a_node_key_speaks_for_no_node():
    real = KeyValue(K.member("n1"), json.dumps({"name": "n1", "priority": 5}), 1, 1, lease=7)
    spoof = KeyValue(K.members + "x/n1", json.dumps({"name": "n1", "priority": 900}), 2, 2, lease=8)
    snap = parse_snapshot(K, [real, spoof], 2)
    assert snap.members["n1"].priority == 5 and snap.member_leases["n1"] == 7
    assert family_of(K, spoof.key) is None
    assert "holds one key per node" in snap.bad_records[spoof.key], "named, so `vigil status` shows it"


def test_a_change_parses_one_record_and_a_snapshot_holds_its_own_dicts():
    builder = SnapshotBuilder(K)
    for n in NODES:
        builder.put(KeyValue(K.member(n), json.dumps({"name": n}), 1, 1, lease=3))
    first = builder.snapshot(1)
    parsed_n1 = first.members["n1"]
    builder.put(KeyValue(K.member("n2"), json.dumps({"name": "n2", "priority": 9}), 1, 2, lease=3))
    second = builder.snapshot(2)
    assert second.members["n1"] is parsed_n1, "an unchanged record is not parsed again"
    assert first.members["n2"].priority == 100 and second.members["n2"].priority == 9
    assert builder.snapshot(2) is second, "no change: the same snapshot"
    assert list(second.members) == sorted(NODES), "a change in place keeps the order"
    second.holds.setdefault("n1", {})["why"] = "changed by a reader"
    assert builder.snapshot(3).holds == {}, "a snapshot's dicts are its own"
