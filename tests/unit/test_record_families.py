"""Issue 22 #1: every key family Vigil reads from etcd has one total parser.
The key layout (vigil.store.keys.Keys) is enumerated, so a key family added
there without a parser in vigil.store.records fails here, and every family
has a sample record the fuzz targets start from (tests/fuzz/test_fuzz_records.py)."""

from __future__ import annotations

import inspect
import json

from tests.fuzz.test_fuzz_records import SAMPLES
from vigil.core.records import BadRecord
from vigil.store.base import KeyValue
from vigil.store.keys import Keys
from vigil.store.records import FAMILIES, family_of, parse_record
from vigil.store.registry import UNNAMED_LEADER, parse_snapshot

K = Keys("c")
NOT_KEYS = {"cluster", "root", "prefix", "jobs"}  # the layout's parameters and roots: no record


def keys_of(keys: Keys) -> dict[str, str]:
    """Every key (or a key under every prefix) the layout names: attribute -> key."""
    out = {}
    for name, attr in inspect.getmembers(type(keys)):
        if name.startswith("_") or name in NOT_KEYS:
            continue
        if isinstance(attr, property):
            path = getattr(keys, name)
        elif inspect.isfunction(attr):
            params = list(inspect.signature(attr).parameters.values())[1:]
            args = [1 if "int" in str(p.annotation) else "n1" for p in params if p.default is inspect.Parameter.empty]
            path = getattr(keys, name)(*args)
        else:
            continue
        out[name] = path + "n1" if path.endswith("/") else path
    return out


def unparsed(keys: Keys) -> list[str]:
    return sorted(f"Keys.{name} ({key})" for name, key in keys_of(keys).items() if family_of(keys, key) is None)


def test_every_key_family_in_the_layout_has_a_parser():
    assert len(keys_of(K)) >= 20, "the enumeration sees the layout"
    assert unparsed(K) == [], "add a parser for it to vigil.store.records.FAMILIES"


def test_a_family_added_without_a_parser_is_found():
    class Grown(Keys):
        @property
        def gadgets(self) -> str:
            return self.prefix + "gadgets/"

        def gadget(self, name: str) -> str:
            return self.gadgets + name
    assert sorted(set(unparsed(Grown("c"))) - set(unparsed(K))) == ["Keys.gadget (/vigil/c/gadgets/n1)",
                                                                  "Keys.gadgets (/vigil/c/gadgets/n1)"]


def test_every_family_has_a_sample_that_reads_back_typed():
    assert set(SAMPLES) == {f.name for f in FAMILIES}
    for f in FAMILIES:
        key, value = SAMPLES[f.name]
        assert family_of(K if key.startswith("/vigil/c/") or key.startswith("/vigil-jobs/c/") else Keys("fz"),
                          key) is f
        out = f.parse(key, value if isinstance(value, str) else json.dumps(value))
        assert not isinstance(out, BadRecord), (f.name, out)


def test_a_key_of_no_family_is_a_bad_record_not_an_error():
    assert parse_record(K, "/vigil/c/gadgets/x", "{}") == BadRecord("/vigil/c/gadgets/x", "not a key Vigil writes")
    assert family_of(K, K.members) is None, "a prefix itself names no record"


def test_the_snapshot_names_every_bad_record_and_keeps_the_good_ones():
    """The families a decision reads, each with a good and a hostile record."""
    huge = "1" + "0" * 400
    good = [(K.member("n1"), json.dumps({"name": "n1"})), (K.state("n1"), "active"),
            (K.hold("n2"), json.dumps({"until": 5.0, "why": "flapping"})),
            (K.fence_marker("n3"), json.dumps({"state": "failed", "by": "n1", "reason": "ipmi: timeout"}))]
    bad = [(K.member("n4"), '{"started_at": %s}' % huge), (K.state("n4"), huge),
           (K.hold("n4"), '{"until": %s}' % huge), (K.fence_marker("n4"), "[" * 100_000),
           (K.switchover, '{"to": NaN}'), (K.member("a b"), "{}"), (K.leader, "\udcff")]
    kvs = sorted((KeyValue(k, v, 1, 1, lease=3) for k, v in good + bad), key=lambda kv: kv.key)
    snap = parse_snapshot(K, kvs, 9)
    assert sorted(snap.bad_records) == sorted(k for k, _ in bad)
    assert list(snap.members) == ["n1"] and snap.states == {"n1": "active"}
    assert snap.holds == {"n2": {"until": 5.0, "why": "flapping"}} and snap.switchover is None
    assert snap.fence_blocked == {"n3": "ipmi: timeout"}, "a marker no fencer wrote blocks nothing"
    assert snap.leader.name == UNNAMED_LEADER and snap.leader.token == 1, "the key still holds the election"
    assert "401 digits" in snap.bad_records[K.member("n4")]
    assert "nested deeper than 32" in snap.bad_records[K.fence_marker("n4")]
